"""Group commit off the socket thread: batched catalog rows, the commit thread, its failures.

The fetch loop stages each message (hash, compress, write to tmp/) and hands each batch to a
commit thread (syncfs, link, syncfs, one catalog transaction; batches that queue up are committed
together).  These tests pin what must not change with that: the catalog and ledger say exactly
what per-message commits said, a failure on either side fails the fetch without deleting anything
uncommitted, tmp/ is left clean, and memory stays flat.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from mailvault import ledger
from mailvault.catalog import Catalog, Committed, utcnow
from mailvault.errors import CatalogError, StoreError
from mailvault.store import BlobStore
from mailvault.testkit.fakepop import FakePop3Server, served_bytes
from tests.test_fetch_faults import PLAIN, check_invariants, complete_and_check, corpus
from tests.vaults import (
    PASSWORD_ENV,
    fetch_json,
    make_vault,
    no_tmp_leftovers,
    run_cli,
    sha256s,
)


def _digest(i: int) -> str:
    return hashlib.sha256(b"message %d" % i).hexdigest()


def _catalog(tmp_path: Path) -> tuple[Catalog, int]:
    catalog = Catalog(tmp_path / "catalog.sqlite")
    catalog.ensure_account("acct", "h", 110, "u", "none")
    return catalog, catalog.start_run("acct")


def test_batch_commit_says_what_single_commits_said(tmp_path: Path) -> None:
    """Freshness (also for a digest twice in one batch), UIDL row ids and the ledger chain."""
    catalog, run_id = _catalog(tmp_path)
    first = [Committed(_digest(i), 100 + i, f"u{i}", "2026-01-01T00:00:00+00:00") for i in (1, 2)]
    assert catalog.commit_messages("acct", run_id, "pop3:acct", first) == [(True, 1), (True, 2)]
    batch = [
        Committed(_digest(3), 103, "u3", "2026-01-02T00:00:00+00:00"),
        Committed(_digest(1), 101, "u4", "2026-01-02T00:00:00+00:00"),  # stored before
        Committed(_digest(3), 103, "u5", "2026-01-02T00:00:00+00:00"),  # earlier in the batch
        Committed(_digest(6), 106, None, "2026-01-02T00:00:00+00:00"),  # no UIDL
    ]
    results = catalog.commit_messages("acct", run_id, "pop3:acct", batch)
    rows = dict(catalog.conn.execute("SELECT uidl, id FROM uidls").fetchall())
    assert results == [(True, rows["u3"]), (False, rows["u4"]), (False, rows["u5"]), (True, None)]
    assert catalog.message_count() == 4
    entries = list(ledger.iter_entries(catalog.conn))
    assert ledger.check_chain(entries) == []
    assert [(e["seq"], e["uidl"], e["sha256"]) for e in entries[2:]] == [
        (3, "u3", _digest(3)),
        (4, "u4", _digest(1)),
        (5, "u5", _digest(3)),
        (6, None, _digest(6)),
    ]
    fresh = [ledger.json.loads(e["detail"])["new_content"] for e in entries]
    assert fresh == [True, True, True, False, False, True]
    catalog.close()


def test_batch_commit_is_atomic(tmp_path: Path) -> None:
    """A UIDL that is already live fails the whole batch: no message, UIDL or ledger row."""
    catalog, run_id = _catalog(tmp_path)
    catalog.commit_messages(
        "acct", run_id, "s", [Committed(_digest(1), 1, "u1", "2026-01-01T00:00:00+00:00")]
    )
    clash = [
        Committed(_digest(2), 2, "u2", "2026-01-01T00:00:00+00:00"),
        Committed(_digest(3), 3, "u1", "2026-01-01T00:00:00+00:00"),
    ]
    with pytest.raises(sqlite3.IntegrityError):
        catalog.commit_messages("acct", run_id, "s", clash)
    assert catalog.message_count() == 1
    assert ledger.head(catalog.conn)[0] == 1
    catalog.close()


def test_append_many_equals_appends(tmp_path: Path) -> None:
    """One executemany chains exactly as single appends do (same hashes for the same input)."""
    rows = [{"account": "a", "uidl": f"u{i}", "sha256": _digest(i), "size": i} for i in range(5)]
    heads = []
    for many in (False, True):
        conn = sqlite3.connect(tmp_path / f"l{many}.sqlite", isolation_level=None)
        Catalog(tmp_path / f"l{many}.sqlite").close()  # the schema
        at = "2026-01-01T00:00:00+00:00"
        if many:
            ledger.append_many(conn, "ingest", [{**r, "at": at, "detail": {"x": 1}} for r in rows])
        else:
            for r in rows:
                ledger._append(
                    conn,
                    "ledger",
                    ledger.LEDGER_FIELDS,
                    {**r, "kind": "ingest", "at": at, "detail": '{"x": 1}'},
                )
        assert ledger.check_chain(ledger.iter_entries(conn)) == []
        heads.append(ledger.head(conn))
        conn.close()
    assert heads[0] == heads[1] and heads[0][0] == 5


@pytest.mark.parametrize("compress", [True, False])
def test_stage_matches_the_streaming_writer(tmp_path: Path, compress: bool) -> None:
    (tmp_path / "tmp").mkdir()
    store = BlobStore(tmp_path, compress=compress)
    data = b"From: a\r\n\r\n" + b"line\r\n" * 5000
    writer = store.writer()
    writer.write(data[:100])
    writer.write(data[100:])
    streamed, staged = writer.finish(), store.stage(data)
    assert (staged.digest, staged.size) == (streamed.digest, streamed.size)
    assert staged.digest == hashlib.sha256(data).hexdigest()
    store.sync()
    assert store.link([staged, streamed]) == [True, False]
    store.sync()
    assert store.read_bytes(staged.digest) == data
    assert list((tmp_path / "tmp").iterdir()) == []


def test_link_refuses_a_bad_digest(tmp_path: Path) -> None:
    (tmp_path / "tmp").mkdir()
    store = BlobStore(tmp_path)
    staged = store.stage(b"x")
    bad = type(staged)("../" + "a" * 61, 1, staged.tmp_name)
    with pytest.raises(StoreError, match="invalid blob name"):
        store.link([bad])


def _vault(tmp_path: Path, server: FakePop3Server, batch: int = 4, **keys: Any) -> Path:
    account = {**PLAIN, "port": server.port, "retries": 0, **keys}
    return make_vault(tmp_path / "vault", {"acct": account}, commit_batch_messages=batch)


def test_many_small_batches_commit_in_order_and_delete_after(tmp_path: Path) -> None:
    """Batches of 2 queue up behind the commits and are committed together; every DELE still
    follows its message's commit, and the counts add up."""
    messages = corpus(30)
    with FakePop3Server(messages) as server:
        vault = _vault(tmp_path, server, batch=2, delete="after-commit")
        code, report = fetch_json(vault)
        acct = report["accounts"][0]
        assert code == 0, report
        assert (acct["fetched"], acct["deleted"], acct["duplicates"]) == (30, 30, 0)
        assert server.mailbox == []
        assert no_tmp_leftovers(vault)


def _fail_after(n: int, real: Any, exc: Exception) -> Any:
    calls = {"n": 0}

    def failing(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] > n:
            raise exc
        return real(*args, **kwargs)

    return failing


@pytest.mark.parametrize(
    ("owner", "method", "after", "error"),
    [
        (BlobStore, "stage", 9, StoreError("disk full while writing (test)")),
        (Catalog, "commit_messages", 0, CatalogError("catalog is broken (test)")),
    ],
    ids=["disk-error-while-staging", "catalog-error-while-committing"],
)
def test_a_failure_fails_the_fetch_and_deletes_nothing_uncommitted(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    owner: type,
    method: str,
    after: int,
    error: Exception,
) -> None:
    messages = corpus(20)
    monkeypatch.setattr(owner, method, _fail_after(after, getattr(owner, method), error))
    with FakePop3Server(messages) as server:
        vault = _vault(tmp_path, server, delete="after-commit")
        code, report = fetch_json(vault)
        acct = report["accounts"][0]
        assert (code, acct["status"]) == (1, "failed")
        assert str(error) in acct["errors"][0]
        check_invariants(vault, server, messages)
        assert no_tmp_leftovers(vault)
        monkeypatch.undo()
        complete_and_check(vault, server, messages)


def test_ctrl_c_between_staging_and_batching_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The narrowest window of an interruption: a message's temp file is written, but no batch
    knows it yet.  The session's end still removes it."""
    real_stage = BlobStore.stage
    calls = {"n": 0}

    def stage_then_interrupt(self: BlobStore, data: bytes) -> Any:
        staged = real_stage(self, data)
        calls["n"] += 1
        if calls["n"] == 9:
            raise KeyboardInterrupt
        return staged

    monkeypatch.setattr(BlobStore, "stage", stage_then_interrupt)
    messages = corpus(20)
    with FakePop3Server(messages) as server:
        vault = _vault(tmp_path, server, batch=4, delete="after-commit")
        result = run_cli(vault, "fetch", "--no-index")
        assert result.exit_code != 0 and calls["n"] == 9
        check_invariants(vault, server, messages)
        assert no_tmp_leftovers(vault)
        monkeypatch.undo()
        complete_and_check(vault, server, messages)


def test_one_huge_message_streams_in_pieces(tmp_path: Path) -> None:
    """A message several pieces long goes through the streaming writer, not in one go."""
    big = b"From: big@example.com\r\n\r\n" + b"0123456789abcdef" * 200_000 + b"\r\n"
    messages = [*corpus(3), big]
    with FakePop3Server(messages) as server:
        vault = _vault(tmp_path, server)
        code, report = fetch_json(vault)
        assert code == 0, report
        assert sha256s([served_bytes(big)]) <= set(_stored(vault))
        assert no_tmp_leftovers(vault)


def _stored(vault: Path) -> list[str]:
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        return [r[0] for r in db.execute("SELECT sha256 FROM messages")]


def test_fetch_memory_stays_flat_for_a_huge_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 64 MiB message streams through in pieces: it costs little more than a 1 MiB one."""
    from tests.test_roundtrip import peak_kib

    monkeypatch.setenv(PASSWORD_ENV, "alice-secret")
    peaks = []
    for size in (1, 64):
        body = (b"z" * 76 + b"\r\n.dot\r\n") * (size * 1024 * 1024 // 86)
        with FakePop3Server([b"Subject: big\r\n\r\n" + body]) as server:
            vault = _vault(tmp_path / f"s{size}", server)
            peaks.append(peak_kib("--vault", str(vault), "-q", "fetch", "--no-index"))
            assert len(_stored(vault)) == 1
    assert peaks[1] - peaks[0] < 24 * 1024, peaks
    assert peaks[1] < 150 * 1024, peaks


def test_a_killed_run_is_closed_with_its_own_entries(tmp_path: Path) -> None:
    """The next run closes a run left 'running' with what its ledger entries say it did:
    ingests with and without a UIDL, duplicates, bytes, deletions a server confirmed; not an
    `import --account` of the same name that ran after it, nor another account's fetch."""
    catalog, killed = _catalog(tmp_path)
    catalog.ensure_account("other", "h2", 110, "u", "none")
    other = catalog.start_run("other")
    when = "2026-01-01T00:00:00+00:00"
    batch = [Committed(_digest(1), 101, "u1", when), Committed(_digest(2), 102, None, when)]
    catalog.commit_messages("acct", killed, "pop3:acct", batch)
    catalog.commit_messages("acct", killed, "pop3:acct", [Committed(_digest(1), 101, "u3", when)])
    catalog.commit_messages("other", other, "pop3:other", [Committed(_digest(4), 104, "o", when)])
    ids = dict(catalog.conn.execute("SELECT uidl, id FROM uidls").fetchall())
    catalog.mark_deleted([ids["u1"], ids["o"]], confirmed_by_quit=True)
    catalog.mark_deleted([ids["u3"]], confirmed_by_quit=False)  # gone: no deletion of the run
    (last,) = catalog.conn.execute("SELECT max(at) FROM ledger").fetchone()
    with catalog.transaction():  # an import after the run was killed
        item = Committed(_digest(5), 105, None, when)
        catalog.record_ingest(item, source="/m.eml", now=utcnow(), account="acct")
    catalog.start_run("acct")
    row = catalog.conn.execute(
        "SELECT status, fetched, duplicates, bytes, deleted, finished_at FROM runs WHERE id=?",
        (killed,),
    ).fetchone()
    assert row == ("killed", 3, 1, 101 + 102 + 101, 1, last)
    assert catalog.conn.execute("SELECT status FROM runs WHERE id=?", (other,)).fetchone() == (
        "running",
    )
    catalog.close()


def test_a_transaction_sqlite_already_rolled_back_keeps_its_own_error(tmp_path: Path) -> None:
    """A big transaction that meets a full disk is rolled back by SQLite itself; the ROLLBACK
    that followed raised "cannot rollback - no transaction is active" in place of "database
    or disk is full", so a retention run on a full disk named no cause and no fix (QA)."""
    catalog, _ = _catalog(tmp_path)
    with (
        pytest.raises(sqlite3.OperationalError, match="database or disk is full"),
        catalog.transaction() as conn,
    ):
        conn.execute("ROLLBACK")  # as SQLite does on SQLITE_FULL while spilling its cache
        raise sqlite3.OperationalError("database or disk is full")
    with catalog.transaction() as conn:  # the connection is usable: no transaction left open
        conn.execute("UPDATE runs SET status = 'ok'")
