"""The index: one schema, catch-up after crashes, one document per sha256, atomic rebuilds."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import tantivy

from mailvault import index as ix
from mailvault import indexer
from mailvault.errors import SearchError
from mailvault.indexer import catch_up, reindex
from mailvault.search import Searcher
from mailvault.vault import Vault
from tests.test_index_support import build_vault, generated, import_messages, special_messages
from tests.vaults import run_cli

REPO = Path(__file__).resolve().parent.parent


def _ids(vault: Vault, query: str) -> list[str]:
    return [h.id for h in Searcher(vault.index_path, query).page(limit=0, snippets=False)]


def _doc_count(vault: Vault, digest: str) -> int:
    index = ix.open_for_search(vault.index_path)
    query = tantivy.Query.term_query(index.schema, "id", digest)
    return int(getattr(index.searcher().search(query, 10), "count", 0))


def _num_docs(vault: Vault) -> int:
    return int(ix.open_for_search(vault.index_path).searcher().num_docs)


def _meta(vault: Vault, sql: str) -> list[tuple]:
    conn = sqlite3.connect(vault.catalog_path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _wait_for_no_process_with(arg: str, timeout: float = 10.0) -> bool:
    """True once no process has ``arg`` among its command-line arguments."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if arg.encode() in cmdline:
                alive.append(pid)
        if not alive:
            return True
        time.sleep(0.1)
    return False


def _unindexed(vault: Vault) -> int:
    return int(_meta(vault, "SELECT count(*) FROM message_meta WHERE indexed_at IS NULL")[0][0])


@pytest.fixture
def small(tmp_path: Path) -> tuple[Vault, list[str]]:
    vault, digests, _ = build_vault(tmp_path / "vault", generated(90, seed=3))
    return vault, digests


def test_schema_is_declared_once_with_every_field() -> None:
    schema = ix.build_schema()
    index = tantivy.Index(schema)  # in memory: the custom analyzers must register
    ix._register(index)
    names = {
        "id",
        "message_id",
        "from",
        "to",
        "cc",
        "bcc",
        "subject",
        "body",
        "attachment",
        "attachment_text",
        "date",
        "size",
        "has_attachment",
        "account",
        "list_id",
        "thread",
    }
    for name in names:
        index.parse_query(f"{name}:x" if name not in ("date", "size", "has_attachment") else "*")
    assert set(ix.DEFAULT_FIELDS) <= names


def test_analyzer_folds_case_and_accents_and_splits_cjk() -> None:
    analyzer = ix.text_analyzer()

    def analyze(text: str) -> list[str]:
        return list(analyzer.analyze(ix.normalize(text)))

    assert analyze("Café STRASSE Straße Ærø") == ["cafe", "strasse", "strasse", "aero"]
    assert analyze("東京タワー") == ["東", "京", "タ", "ワ", "ー"]
    assert analyze("Привет, мир! 한국어") == ["привет", "мир", "한국어"]
    assert analyze("cafe\u0301") == ["cafe"]  # decomposed accent folds too
    text = "明日は東京タワーへ Ünïcödé"
    assert ix.display(ix.normalize(text)) == text


def test_catch_up_indexes_everything_once_and_is_idempotent(small: tuple[Vault, list[str]]) -> None:
    vault, digests = small
    first = catch_up(vault)
    assert first.parsed == first.indexed == len(digests)
    assert first.documents == len(digests) == _num_docs(vault)
    assert _unindexed(vault) == 0
    again = catch_up(vault)
    assert again.parsed == again.indexed == again.repaired == 0
    assert _num_docs(vault) == len(digests)
    assert all(_doc_count(vault, d) == 1 for d in digests)


def test_pool_and_inline_paths_give_the_same_index(
    small: tuple[Vault, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    vault, digests = small
    monkeypatch.setattr(indexer, "INLINE_MAX", 10)  # 90 messages: the process pool runs
    monkeypatch.setattr(indexer, "BATCH", 16)
    monkeypatch.setattr(indexer, "COMMIT_EVERY", 40)
    catch_up(vault)
    pooled = {q: _ids(vault, q) for q in ("has:attachment", "date:2023", "size:>20k")}
    reindex_report = None
    monkeypatch.setattr(indexer, "INLINE_MAX", 10_000)  # now in-process
    reindex_report = reindex(vault)
    assert reindex_report.indexed == len(digests)
    assert {q: _ids(vault, q) for q in pooled} == pooled


def test_interrupted_between_catalog_and_index_commit(
    small: tuple[Vault, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """store_parsed committed, the index commit never happened: the next run fills the gap."""
    vault, digests = small
    monkeypatch.setattr(indexer, "BATCH", 30)

    def boom(self: ix.IndexWriter) -> None:
        raise RuntimeError("power cut")

    monkeypatch.setattr(ix.IndexWriter, "commit", boom)
    with pytest.raises(RuntimeError):
        catch_up(vault)
    monkeypatch.undo()
    parsed = _meta(vault, "SELECT count(*) FROM message_meta")[0][0]
    assert parsed >= 30  # the catalog side of at least one batch is committed
    assert _unindexed(vault) == parsed
    report = catch_up(vault)
    assert report.indexed == len(digests)
    assert report.parsed == len(digests) - parsed
    assert _num_docs(vault) == len(digests)
    assert _unindexed(vault) == 0


def test_interrupted_between_index_commit_and_indexed_at(small: tuple[Vault, list[str]]) -> None:
    """The index has the documents, the catalog does not know: re-adding keeps one per sha256."""
    vault, digests = small
    catch_up(vault)
    conn = sqlite3.connect(vault.catalog_path)
    with conn:
        conn.execute(
            "UPDATE message_meta SET indexed_at = NULL WHERE sha256 IN "
            "(SELECT sha256 FROM message_meta ORDER BY sha256 LIMIT 40)"
        )
    conn.close()
    report = catch_up(vault)
    assert report.indexed == 40 and report.parsed == 0
    assert _num_docs(vault) == len(digests)
    assert all(_doc_count(vault, d) == 1 for d in digests)


def test_killed_mid_run_then_catch_up_is_consistent(tmp_path: Path) -> None:
    """SIGKILL inside a real run (after a catalog batch, around index commits), then recover."""
    vault, digests, _ = build_vault(tmp_path / "vault", generated(150, seed=8))
    script = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from mailvault import indexer
        from mailvault.vault import open_vault
        indexer.BATCH = 20
        indexer.COMMIT_EVERY = 50
        def progress(done, total):
            if done >= 110:
                os.kill(os.getpid(), signal.SIGKILL)
        vault = open_vault(Path({str(vault.root)!r}))
        with vault.write_lock("index"):
            indexer.catch_up(vault, progress=progress)
        """
    )
    marker = f"killed-run-{os.getpid()}-{tmp_path.name}"
    proc = subprocess.run([sys.executable, "-c", script, marker], cwd=REPO, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    # Its parse workers die with it instead of blocking on their result pipe forever.
    assert _wait_for_no_process_with(marker), "orphaned parse workers left running"
    indexed_before = _num_docs(vault)
    assert 0 < indexed_before < len(digests)
    report = catch_up(vault)
    assert report.documents == len(digests) == _num_docs(vault)
    assert _unindexed(vault) == 0
    assert all(_doc_count(vault, d) == 1 for d in digests)


def test_lost_index_directory_is_rebuilt_by_catch_up(small: tuple[Vault, list[str]]) -> None:
    vault, digests = small
    catch_up(vault)
    import shutil

    shutil.rmtree(vault.index_path)
    report = catch_up(vault)
    assert report.indexed == len(digests) and report.parsed == 0
    assert _num_docs(vault) == len(digests)


def test_documents_missing_from_the_index_are_repaired(small: tuple[Vault, list[str]]) -> None:
    """An index restored from an older backup: the catalog says indexed, the index lacks them."""
    vault, digests = small
    catch_up(vault)
    index, _ = ix.create_or_open(vault.index_path)
    writer = ix.IndexWriter(index)
    for digest in digests[:7]:
        writer.delete(digest)
    writer.close()
    assert _num_docs(vault) == len(digests) - 7
    report = catch_up(vault)
    assert report.repaired == 7
    assert _num_docs(vault) == len(digests)
    assert all(_doc_count(vault, d) == 1 for d in digests[:7])


def test_the_exact_check_walks_the_catalog_beside_the_index(
    small: tuple[Vault, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``catch_up(exact=True)``, as retention and `hold add` run it, walks the messages the
    catalog lists as indexed beside the index's live ids, both in order: no term query per
    message and no set of every id.  A document lost and one of a purged message are both
    found, whatever the counts say."""
    vault, digests = small
    catch_up(vault)
    index, _ = ix.create_or_open(vault.index_path)
    writer = ix.IndexWriter(index)
    writer.delete(digests[0])  # lost
    writer.close()
    with sqlite3.connect(vault.catalog_path) as db:  # purged, its document left behind
        db.execute("DELETE FROM message_meta WHERE sha256 = ?", (digests[1],))
        db.execute("UPDATE messages SET purged_at = '2026-01-01' WHERE sha256 = ?", (digests[1],))
    asked: list[str] = []
    contains = ix.contains

    def counted(searcher: tantivy.Searcher, schema: tantivy.Schema, sha256: str) -> bool:
        asked.append(sha256)
        return contains(searcher, schema, sha256)

    monkeypatch.setattr(ix, "contains", counted)
    report = catch_up(vault, exact=True)
    assert (report.repaired, asked) == (2, [])
    assert _doc_count(vault, digests[0]) == 1 and _doc_count(vault, digests[1]) == 0
    assert _num_docs(vault) == len(digests) - 1


def test_a_duplicate_from_another_account_is_reindexed_with_both_accounts(tmp_path: Path) -> None:
    vault, _, _ = build_vault(tmp_path / "vault", [])
    raw = special_messages()["accents"]
    (digest,) = import_messages(vault, [raw], account="alpha", uidl_prefix="a")
    catch_up(vault)
    assert _ids(vault, "account:alpha") == [digest]
    assert _ids(vault, "account:beta") == []
    import_messages(vault, [raw], account="beta", uidl_prefix="b")
    report = catch_up(vault)
    assert report.indexed == 1 and report.parsed == 0
    assert _ids(vault, "account:beta") == [digest] == _ids(vault, "account:alpha")
    assert _num_docs(vault) == 1


def test_reindex_matches_incremental_and_swaps_atomically(small: tuple[Vault, list[str]]) -> None:
    vault, digests = small
    catch_up(vault)
    queries = ["has:attachment", "date:2024", "size:>10k", "re", "subject:re", "*"]
    before = {q: _ids(vault, q) for q in queries}
    report = reindex(vault)
    assert report.rebuilt and report.indexed == len(digests) == report.documents
    assert {q: _ids(vault, q) for q in queries} == before
    assert not ix.new_path(vault.index_path).exists()
    assert not ix.old_path(vault.index_path).exists()
    assert _unindexed(vault) == 0
    assert catch_up(vault).indexed == 0


def test_a_search_during_a_rebuild_is_told_of_no_unindexed_mail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rebuild cleared every message's indexed_at in one commit, then marked them again in
    others: a search between them (it counts the indexed messages, ``message_counts``) said
    every message was unindexed.  At each commit of a rebuild, the catalog and the live index
    agree."""
    from mailvault import catalog as catalog_module
    from mailvault.search.command import index_gap

    vault, _, _ = build_vault(tmp_path / "v", generated(6, seed=3))
    catch_up(vault)
    commit = catalog_module._Transaction.__exit__
    seen: list[tuple[int, int]] = []

    def committed(self: catalog_module._Transaction, *exc: object) -> None:
        commit(self, *exc)
        seen.append(index_gap(vault.root, _num_docs(vault)))

    monkeypatch.setattr(catalog_module._Transaction, "__exit__", committed)
    reindex(vault)
    assert seen and set(seen) == {(0, 0)}, seen


def test_crash_during_the_swap_is_finished_on_open(small: tuple[Vault, list[str]]) -> None:
    vault, digests = small
    catch_up(vault)
    live, new, old = vault.index_path, ix.new_path(vault.index_path), ix.old_path(vault.index_path)
    # Build a complete index.new, then "crash" after the first rename of the swap.
    import shutil

    shutil.copytree(live, new)
    os.rename(live, old)
    assert not live.exists()
    # A search (no lock) still works, reading index.new.
    assert len(_ids(vault, "*")) == len(digests)
    # The next writer finishes the swap and removes the old index.
    catch_up(vault)
    assert live.exists() and not new.exists() and not old.exists()
    assert _num_docs(vault) == len(digests)


def test_an_incomplete_rebuild_is_discarded(small: tuple[Vault, list[str]]) -> None:
    vault, digests = small
    catch_up(vault)
    new = ix.new_path(vault.index_path)
    ix.create_or_open(new, marker=False)  # a build that died before its marker
    assert not ix.is_complete(new)
    ix.recover(vault.index_path)
    assert not new.exists()
    assert _num_docs(vault) == len(digests)


def test_schema_version_mismatch_asks_for_reindex(small: tuple[Vault, list[str]]) -> None:
    vault, _ = small
    catch_up(vault)
    ix.write_marker(vault.index_path)
    marker = vault.index_path / ix.MARKER
    assert f'"schema_version": {ix.SCHEMA_VERSION}' in marker.read_text()
    marker.write_text(
        marker.read_text().replace(f'"schema_version": {ix.SCHEMA_VERSION}', '"schema_version": 0')
    )
    with pytest.raises(SearchError, match="mailvault reindex"):
        ix.open_for_search(vault.index_path)
    # exit 3, not 2: a cron job read "bad query" into an index built by another version
    result = run_cli(vault.root, "search", "--count", "*")
    assert result.exit_code == 3 and "schema version 0" in result.stderr, result.output
    reindex(vault)
    assert _num_docs(vault) > 0


def test_missing_blob_is_reported_not_fatal(small: tuple[Vault, list[str]]) -> None:
    vault, digests = small
    path = vault.store().find(digests[0])
    assert path is not None
    path.unlink()
    report = catch_up(vault)
    assert report.missing == [digests[0]]
    assert report.indexed == len(digests) - 1


def test_empty_vault(tmp_path: Path) -> None:
    vault, _, _ = build_vault(tmp_path / "vault", [])
    report = catch_up(vault)
    assert report.indexed == 0
    assert reindex(vault).documents == 0
    assert _ids(vault, "*") == []


_DOOMED: list[str] = []


def _dying_parse(job: tuple[str, str]) -> object:
    if job[0] in _DOOMED:
        os._exit(9)  # a worker killed mid-batch (OOM killer, segfault)
    return indexer._parse_with(indexer._WORKER_STORE[0], job)


def test_a_dead_worker_does_not_stop_the_run(
    small: tuple[Vault, list[str]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    vault, digests = small
    monkeypatch.setattr(indexer, "INLINE_MAX", 10)
    monkeypatch.setattr(indexer, "BATCH", 20)
    monkeypatch.setattr(indexer, "_parse_job", _dying_parse)
    monkeypatch.setattr(sys.modules[__name__], "_DOOMED", [sorted(digests)[45]])
    report = catch_up(vault)
    assert "parse worker died" in caplog.text
    assert report.indexed == len(digests) and not report.missing
    assert _num_docs(vault) == len(digests)


def _damage_index_and_catalog(vault: Vault, digests: list[str], *, foreign: bool = True) -> None:
    """A missing document, a duplicate, a purged message's document left behind, a message not
    indexed yet, and (``foreign``) a document whose id is no sha256 (an index not written by
    mailvault)."""
    from datetime import UTC, datetime

    from mailvault.parse import parse_message

    index, _ = ix.create_or_open(vault.index_path)
    writer = ix.IndexWriter(index)
    writer.delete(digests[0])
    raw = vault.store().read_bytes(digests[1])
    parsed = parse_message(raw, digests[1], ingest_time=datetime.now(UTC))
    writer.writer.add_document(ix.make_document(parsed))
    if foreign:
        writer.writer.add_document(tantivy.Document(id="Not-A-Sha256", subject="foreign"))
    writer.close()
    conn = sqlite3.connect(vault.catalog_path)
    with conn:
        conn.execute("UPDATE message_meta SET indexed_at = NULL WHERE sha256 = ?", (digests[3],))
        conn.execute("UPDATE messages SET purged_at = '2025-01-01' WHERE sha256 = ?", (digests[2],))
    conn.close()
    index, _ = ix.create_or_open(vault.index_path)
    writer = ix.IndexWriter(index)
    writer.delete(digests[3])
    writer.close()


def test_verify_walks_the_catalog_and_the_index_side_by_side(
    small: tuple[Vault, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """verify's index check held every message id of the vault at once (the catalog's, the
    indexed ones', a sorted copy, and the whole id term dictionary); it now walks the catalog
    and the index's ids side by side, both in order, and finds the same."""
    from mailvault import verify

    vault, digests = small
    catch_up(vault)
    _damage_index_and_catalog(vault, digests)
    expected = {
        ("index-missing", digests[0]),
        ("index-duplicate", digests[1]),
        ("index-extra", digests[2]),
        ("index-extra", "Not-A-Sha256"),
        ("index-pending", "index"),
    }
    live = set(digests) - {digests[2]}
    assert {(f.code, f.subject) for f in indexer.index_findings(vault, live)} == expected
    steps: list[str] = []
    walk = ix.live_ids

    def index_ids(*args: tantivy.Searcher) -> object:
        for item in walk(*args):
            steps.append("index")
            yield item

    def catalog_ids(vault: Vault, ids: object, quick: bool) -> object:
        def counted(ids: object) -> object:
            for sha256 in ids:  # type: ignore[attr-defined]
                steps.append("catalog")
                yield sha256

        return indexer.index_findings(vault, counted(ids), quick)

    monkeypatch.setattr(ix, "live_ids", index_ids, raising=False)
    monkeypatch.setattr(ix, "ID_RUN", 4, raising=False)
    found = list(verify.verify(vault, quick=True, index_check=catalog_ids))  # type: ignore[arg-type]
    assert {(f.code, f.subject) for f in found if f.code.startswith("index-")} == expected
    # the index: all but the 2 documents deleted, plus the one whose id is no sha256
    assert steps.count("catalog") == len(live) and steps.count("index") == len(digests) - 1
    ahead = 0
    for step in steps:  # neither side is read more than a few ids ahead of the other
        ahead += 1 if step == "catalog" else -1
        assert abs(ahead) <= 2, steps


def test_live_ids_are_every_live_id_in_order_whatever_the_run(
    small: tuple[Vault, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The id term dictionary read in runs cut by hex digits: every live id once, in byte
    order, with its number of live documents; an id that is no sha256 is not missed."""
    vault, digests = small
    catch_up(vault)
    _damage_index_and_catalog(vault, digests)
    searcher = ix.open_for_search(vault.index_path).searcher()
    schema = ix.open_for_search(vault.index_path).schema
    whole = list(ix.live_ids(searcher, schema))
    assert [term for term, _ in whole] == sorted(
        ["Not-A-Sha256", *(d for d in digests if d not in (digests[0], digests[3]))]
    )
    assert dict(whole)[digests[1]] == 2 and dict(whole)["Not-A-Sha256"] == 1
    monkeypatch.setattr(ix, "ID_RUN", 4)
    assert list(ix.live_ids(searcher, schema)) == whole
    index, _ = ix.create_or_open(vault.index_path)
    writer = ix.IndexWriter(index)
    writer.delete("Not-A-Sha256")
    writer.close()
    searcher = ix.open_for_search(vault.index_path).searcher()
    runs: list[str] = []
    real = ix.id_prefixes
    monkeypatch.setattr(ix, "id_prefixes", lambda *a: (runs.append(p) or p for p in real(*a)))
    assert list(ix.live_ids(searcher, schema)) == [x for x in whole if x[0] != "Not-A-Sha256"]
    assert len(runs) == 256  # 89 ids in runs of about 4: two hex digits


def test_verify_index_findings(small: tuple[Vault, list[str]]) -> None:
    vault, digests = small
    ids = set(digests)
    # init made an empty index: the messages added since are pending
    assert [f.code for f in indexer.index_findings(vault, ids)] == ["index-pending"]
    shutil.rmtree(vault.index_path)
    assert [f.code for f in indexer.index_findings(vault, ids)] == ["index-unreadable"]
    catch_up(vault)
    assert list(indexer.index_findings(vault, ids)) == []
    # a missing document, a duplicate, an extra one (purged, its document left behind), a
    # message not indexed yet
    _damage_index_and_catalog(vault, digests, foreign=False)
    live = ids - {digests[2]}
    found = {(f.code, f.subject) for f in indexer.index_findings(vault, live)}
    assert found == {
        ("index-missing", digests[0]),
        ("index-duplicate", digests[1]),
        ("index-extra", digests[2]),
        ("index-pending", "index"),
    }
    reindex(vault)  # what `verify --repair-index` runs
    assert list(indexer.index_findings(vault, live)) == []


def test_purged_messages_are_neither_parsed_nor_indexed(small: tuple[Vault, list[str]]) -> None:
    vault, digests = small
    conn = sqlite3.connect(vault.catalog_path)
    with conn:
        conn.execute(
            "UPDATE messages SET purged_at = '2025-01-01T00:00:00+00:00' WHERE sha256 = ?",
            (digests[0],),
        )
    conn.close()
    path = vault.store().find(digests[0])
    assert path is not None
    path.unlink()
    report = catch_up(vault)
    assert report.indexed == len(digests) - 1 and not report.missing
    assert reindex(vault).documents == len(digests) - 1


def test_imported_account_is_searchable(tmp_path: Path) -> None:
    """The same content imported again with --account: the message is indexed again with it."""
    vault, _, _ = build_vault(tmp_path / "vault", [])
    raw = special_messages()["cjk"]
    (digest,) = import_messages(vault, [raw])
    catch_up(vault)
    assert _ids(vault, "account:archive2019") == []
    (tmp_path / "again.eml").write_bytes(raw)
    result = run_cli(vault.root, "import", "--no-index", "--account", "archive2019",
                     str(tmp_path / "again.eml"))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert catch_up(vault).indexed == 1
    assert _ids(vault, "account:archive2019") == [digest]


def test_an_account_edited_in_the_catalog_does_not_move_a_hold(tmp_path: Path) -> None:
    """`account:` was indexed from the imports and uidls rows: editing imports.account (then
    any rebuild, which retention runs itself) made a hold on `account:legal` miss the message.
    Accounts come from the ledger's ingest entries."""
    vault, _, _ = build_vault(tmp_path / "vault", [])
    raw = special_messages()["cjk"]
    (tmp_path / "m.eml").write_bytes(raw)
    assert (
        run_cli(vault.root, "import", "--account", "legal", str(tmp_path / "m.eml")).exit_code == 0
    )
    with sqlite3.connect(vault.catalog_path) as conn:
        conn.execute("UPDATE imports SET account = 'legacy' WHERE account = 'legal'")
    conn.close()
    reindex(vault)
    (digest,) = _ids(vault, "account:legal")
    assert _ids(vault, "account:legacy") == []


@pytest.mark.parametrize("year", ["3609", "1500", "1066"])
def test_a_date_outside_tantivys_range_is_indexed_at_the_bound(tmp_path: Path, year: str) -> None:
    """Real mail has Date headers in the year 3609: indexing must not stop at them, and the
    message sorts and ranges on the right side of every real date."""
    raw = (
        f"From: a@example.com\r\nTo: b@example.com\r\nSubject: time traveller\r\n"
        f"Date: Sat, 30 Jun {year} 09:33:50 +0000\r\nMessage-ID: <tt-{year}@example.com>\r\n"
        "\r\nThe word chronoxyl is here.\r\n"
    ).encode()
    vault, _, names = build_vault(tmp_path / "vault", generated(3, seed=5), {"odd": raw})
    report = catch_up(vault)
    assert report.indexed == 4
    hits = Searcher(vault.index_path, "chronoxyl").page(limit=0, snippets=False)
    assert [h.id for h in hits] == [names["odd"]]
    assert hits[0].date is not None and hits[0].date.year == (2262 if year == "3609" else 1678)
    late = Searcher(vault.index_path, "date:>2100").page(limit=0, snippets=False)
    early = Searcher(vault.index_path, "date:<1700").page(limit=0, snippets=False)
    assert [h.id for h in (late if year == "3609" else early)] == [names["odd"]]


@pytest.mark.parametrize(
    ("year", "queries"),
    [
        ("1500", ["date:1500", "date:<1600", "date:<=1500-06", "date:[1000 TO 1677-12-31]"]),
        ("1066", ["date:1066-06-30", "date:{* TO 1100}", "date:<1678"]),
        ("3609", ["date:3609", "date:>2500", "date:[3000 TO *]", "date:>=2262"]),
        ("9999", ["date:9999", "date:9999-06-30", "after:9999-06-30", "date:[9000 TO 9999]"]),
    ],
)
def test_a_query_for_dates_outside_tantivys_range_finds_the_clamped_messages(
    tmp_path: Path, year: str, queries: list[str]
) -> None:
    """A message dated outside 1678..2262 is indexed at the bound; a query range outside it
    is clamped the same way, so `date:<1600` (or a hold on it) finds the message dated 1500
    instead of nothing; the messages of real dates stay outside such a range."""
    raw = (
        f"From: a@example.com\r\nTo: b@example.com\r\nSubject: time traveller\r\n"
        f"Date: Sat, 30 Jun {year} 09:33:50 +0000\r\nMessage-ID: <tt-{year}@example.com>\r\n"
        "\r\nThe word chronoxyl is here.\r\n"
    ).encode()
    vault, _, names = build_vault(tmp_path / "vault", generated(3, seed=5), {"odd": raw})
    assert catch_up(vault).indexed == 4
    for query in queries:
        hits = Searcher(vault.index_path, query).page(limit=0, snippets=False)
        assert [h.id for h in hits] == [names["odd"]], query


def test_a_query_reaching_the_last_day_a_datetime_holds_is_a_range_not_a_crash(
    tmp_path: Path,
) -> None:
    """`date:9999-12-31` (whose end, the next day, is past what a datetime holds) raised
    OverflowError out of `search` and `hold add`, and `date:9999` was refused as no date.  A
    range open at both ends (`before:3000`, `date:[* TO *]`) was Tantivy's `[* TO *]`, which
    matches nothing: a hold on it protected no message.  Every one of them is a range now."""
    vault, _, _ = build_vault(tmp_path / "vault", generated(3, seed=5))
    assert catch_up(vault).indexed == 3
    every = sorted(h.id for h in Searcher(vault.index_path, "*").page(limit=0, snippets=False))
    for query in ("date:<=9999-12-31", "before:3000", "date:[* TO *]", "date:{* TO 9999-12-31]"):
        hits = Searcher(vault.index_path, query).page(limit=0, snippets=False)
        assert sorted(h.id for h in hits) == every, query
    for query in (
        "date:9999-12-31",
        "after:9999-12-31",
        "date:>9999",
        "date:9999-12",
        "date:>=9999-12-31T23:59:59",
        "date:9999-12-31T23:00:00-05:00",
        "before:0001-01-01T00:00:00+05:00",
    ):
        hits = Searcher(vault.index_path, query).page(limit=0, snippets=False)
        assert hits == [], query


def test_every_message_of_the_corpora_is_indexed_and_verifies(tmp_path: Path) -> None:
    """Torture tests, broken charsets and garbled dates: indexing never stops at one message."""
    from tests.test_export_kit import catalog_set, cli_json, corpora_dir, corpora_files, new_vault

    singles, mboxes = corpora_files(corpora_dir())
    emls = tmp_path / "emls"
    emls.mkdir()
    for i, path in enumerate(singles):
        (emls / f"{i:05d}.eml").write_bytes(path.read_bytes())
    vault = new_vault(tmp_path / "vault")
    code, report = cli_json(vault, "import", "--no-index", str(emls), *map(str, mboxes))
    assert code == 0, report["rejected"]
    code, indexed = cli_json(vault, "index")
    assert code == 0, indexed
    assert indexed["indexed"] == len(catalog_set(vault)) > 1000
    code, verified = cli_json(vault, "verify")
    assert code == 0 and verified["ok"] and verified["findings"] == [], verified


def _long_body_message() -> bytes:
    """Two text parts: the first word of each part near the start, the last past 3,000 bytes."""
    filler = ("lorem ipsum dolor " * 100 + "\r\n") * 2  # 3,604 bytes
    parts = [
        f"--b\r\nContent-Type: text/plain\r\n\r\nfirstpartword\r\n{filler}firstpartlate\r\n",
        f"--b\r\nContent-Type: text/plain\r\n\r\nsecondpartword\r\n{filler}\r\n--b--\r\n",
    ]
    return (
        "From: a@example.com\r\nTo: b@example.com\r\nSubject: long body\r\n"
        "Message-ID: <long@example.com>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b"\r\n\r\n' + "".join(parts)
    ).encode()


def test_body_text_indexed_is_capped_per_message_but_shown_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every body part was indexed up to 16 MiB each, with no cap per message: 40 messages of
    8 MB text took 1.27 GB to index.  The index now reads INDEX_BODY_BYTES of body text per
    message, all parts together (made small here); `show` still prints the whole body."""
    monkeypatch.setattr(indexer, "INDEX_BODY_BYTES", 3000, raising=False)
    vault, _, _ = build_vault(tmp_path / "vault", [])
    (digest,) = import_messages(vault, [_long_body_message()])
    catch_up(vault)
    assert _ids(vault, "firstpartword") == [digest]
    assert _ids(vault, "firstpartlate") == [] and _ids(vault, "secondpartword") == []
    with sqlite3.connect(vault.catalog_path) as db:
        (defects,) = db.execute("SELECT defects FROM message_meta").fetchone()
    assert "body: text past its first 3000 bytes not read" in defects
    shown = run_cli(vault.root, "show", digest)
    assert shown.exit_code == 0
    assert "firstpartlate" in shown.stdout and "secondpartword" in shown.stdout
    assert "not read" not in shown.stdout  # show read the whole body: no such defect


def test_parse_batches_are_cut_by_bytes_as_well_as_by_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batch was 256 messages whatever their size; two in flight held 512 parsed bodies."""
    monkeypatch.setattr(indexer, "BATCH", 4)
    monkeypatch.setattr(indexer, "BATCH_BYTES", 1000, raising=False)
    sizes = [100, 100, 100, 100, 100, 600, 600, 5000, 10**9, 10, 10]
    jobs = [(f"{i:064x}", "2024-01-01T00:00:00+00:00", size) for i, size in enumerate(sizes)]
    batches = [[job[2] for job in batch] for batch in indexer._chunks(jobs)]
    assert batches == [[100, 100, 100, 100], [100, 600], [600], [5000], [10**9], [10, 10]]


def _words_message(n: int, words: int, tail: str) -> bytes:
    body = " ".join(f"w{n}x{i % 997}" for i in range(words)) + f" {tail}\r\n"
    return (
        f"From: a@example.com\r\nTo: b@example.com\r\nSubject: words {n}\r\n"
        f"Message-ID: <words{n}@example.com>\r\n\r\n{body}"
    ).encode()


def test_only_the_start_of_a_body_is_stored_and_the_rest_is_still_searchable(
    tmp_path: Path,
) -> None:
    """The whole body (up to 4 MiB) was a stored field: Tantivy keeps the last 100 stored blocks
    it read per segment decompressed, so 200 hits on 2 MB bodies took `search` 700 MB.  Only
    PREVIEW_CHARS of it are stored now, in a field of its own; every word stays searchable."""
    vault, _, _ = build_vault(tmp_path / "vault", [])
    words = ix.PREVIEW_CHARS // 4  # "wNxK " is five or more characters: past the preview
    (digest,) = import_messages(vault, [_words_message(1, words, "farawayword")])
    catch_up(vault)
    assert _ids(vault, "farawayword") == [digest]
    searcher = ix.open_for_search(vault.index_path).searcher()
    query = tantivy.Query.term_query(ix.open_for_search(vault.index_path).schema, "id", digest)
    ((_, address),) = searcher.search(query, 1).hits
    doc = searcher.doc(address)
    assert doc.get_first("body") is None
    preview = ix.preview(doc)
    assert len(preview) == ix.PREVIEW_CHARS and preview.startswith("w1x0 w1x1 ")
    (hit,) = Searcher(vault.index_path, "farawayword").page(limit=1)
    assert hit.snippet.startswith("w1x0 w1x1")  # not in the preview: the body's opening
    (hit,) = Searcher(vault.index_path, "w1x5").page(limit=1)
    assert "w1x5" in hit.snippet and hit.highlights


def test_indexing_commits_by_text_volume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tantivy queues added documents for its indexing thread without bound and only a commit
    waits for it: fed big bodies faster than it indexed them, the queue held 200 of 2 MB
    (320 MB).  A commit now also comes every COMMIT_TEXT characters of text."""
    monkeypatch.setattr(indexer, "COMMIT_TEXT", 30_000)
    monkeypatch.setattr(indexer, "BATCH", 1)
    commits: list[int] = []
    real_commit = ix.IndexWriter.commit

    def counting(self: ix.IndexWriter) -> None:
        commits.append(self.pending)
        real_commit(self)

    monkeypatch.setattr(ix.IndexWriter, "commit", counting)
    vault, _, _ = build_vault(tmp_path / "vault", [])
    digests = import_messages(vault, [_words_message(n, 4000, "end") for n in range(6)])
    report = catch_up(vault)
    assert report.indexed == 6
    assert len(commits) >= 3  # about 24,000 characters each: a commit every second message
    assert sorted(_ids(vault, "end")) == sorted(digests)
