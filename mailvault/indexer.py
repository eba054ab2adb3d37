"""Parse and index: bring the catalog's parse tables and the Tantivy index up to the store.

``catch_up`` is what `mailvault index` (and `mailvault fetch` after a commit) runs: every
committed message without a ``message_meta`` row is parsed and stored, and every message whose
``indexed_at`` is NULL is (re-)indexed.  The order of the writes is what makes a crash harmless:

1. ``store_parsed``: the parse rows of a batch, one catalog transaction;
2. the index documents (delete by ``id`` term, then add) and ``IndexWriter.commit``;
3. ``message_meta.indexed_at`` for exactly those rows.

A crash after 1 leaves rows with ``indexed_at`` NULL, which the next run re-indexes; a crash
after 2 re-indexes documents that are already there, and delete-by-term keeps that at one
document per sha256.  A message whose content arrives again from another account after it was
indexed (a new ``uidls`` row) is re-indexed too, so its ``account`` field stays complete.  If the
index directory was lost, it is recreated and every row is re-indexed; and if the index holds
fewer documents than the catalog says, the missing ones are found (one term lookup per row) and
re-indexed.

``reindex`` builds a new index in ``index.new/`` from the store and the catalog alone, then swaps
it in (see ``mailvault.index``).

Parsing runs in a process pool (``WORKERS`` processes); the workers read and decompress the
blobs themselves, given the vault root, so only sha256s go out and ``ParsedMessage``s come back.
Two batches are in flight at most, which bounds memory.  The caller holds the vault write lock.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mailvault import index as ix
from mailvault._workers import init_worker, return_large_blocks
from mailvault.catalog import Catalog, utcnow
from mailvault.errors import IndexDamaged, IndexOutdated, MailvaultError, from_storage_error
from mailvault.parse.content import MAX_ATTACHMENTS_TEXT_CHARS
from mailvault.parse.model import ParsedMessage
from mailvault.parse.skeleton import parse_chunks
from mailvault.store import BlobStore
from mailvault.vault import Vault, read_only_uri

log = logging.getLogger(__name__)

WORKERS = 2
BATCH = 256  # messages per parse batch and per catalog transaction (at most)
# ... and at most this much text: a message counts its size, up to the most text its parse can
# carry (INDEX_BODY_BYTES of body, and attachment text), so that two batches in flight hold a
# bounded amount of text however big the messages are.
BATCH_BYTES = 16 * 1024 * 1024
# Body text indexed per message, all body parts together: the first 4 MiB (a longer body is
# stored, exported and shown whole; only its words past this are not searchable).
INDEX_BODY_BYTES = 4 * 1024 * 1024
COMMIT_EVERY = 2048  # index documents per Tantivy commit (at most)
COMMIT_SECONDS = 30.0  # ... or this long since the last commit
# ... or this much text (characters of body and attachment text).  Tantivy queues added
# documents for its indexing thread without bound, and only a commit waits for that thread:
# fed parsed 2 MB bodies faster than it indexed them, the queue held 200 of them (320 MB).
COMMIT_TEXT = 32 * 1024 * 1024
INLINE_MAX = 64  # fewer targets than this: parse in-process, no pool start-up

Progress = Callable[[int, int], None]
Job = tuple[str, str, int]  # (sha256, first_ingest_at, size)


@dataclass
class IndexReport:
    """What one catch-up or rebuild did."""

    parsed: int = 0  # messages parsed and stored in the catalog for the first time
    indexed: int = 0  # documents written to the index
    unreadable: int = 0  # of those parsed: marked unreadable (still listed and searchable)
    defective: int = 0  # of those parsed: with at least one recorded defect
    repaired: int = 0  # catalog said indexed, the index did not have it
    missing: list[str] = field(default_factory=list)  # blobs that could not be read
    documents: int = 0  # documents in the index afterwards
    seconds: float = 0.0
    rebuilt: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "parsed": self.parsed,
            "indexed": self.indexed,
            "unreadable": self.unreadable,
            "defective": self.defective,
            "repaired": self.repaired,
            "missing": self.missing,
            "documents": self.documents,
            "seconds": round(self.seconds, 3),
            "rebuilt": self.rebuilt,
        }


# -- workers -----------------------------------------------------------------------------------

_WORKER_STORE: list[BlobStore] = []


def _worker_init(root: str, parent: int) -> None:
    init_worker(parent)
    _WORKER_STORE[:] = [BlobStore(Path(root))]


def _ingest_time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return datetime.now(UTC)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _parse_with(store: BlobStore, job: Job) -> ParsedMessage | tuple[str, str]:
    """Parse one stored message; (sha256, reason) if its blob cannot be read."""
    sha256, ingest, _ = job
    try:
        # Streamed: a message over skeleton.WHOLE_MAX is parsed from its skeleton, so a
        # 150 MB attachment costs tens of MB, not the 1.4 GB the stdlib parser would take.
        # Hashed as it streams (parse_chunks reads to the end): an edited blob is not indexed,
        # for holds are matched through the index, and the message then stays unindexed,
        # which retention takes as "cannot prove it is not held".
        chunks = store.iter_verified(sha256)
        return parse_chunks(
            chunks, sha256, ingest_time=_ingest_time(ingest), body_limit=INDEX_BODY_BYTES
        )
    except (MailvaultError, OSError, ValueError) as exc:
        return (sha256, str(exc))
    except Exception as exc:  # zstd errors on a corrupt blob
        return (sha256, f"cannot read blob {sha256}: {type(exc).__name__}: {exc}")


def _parse_job(job: Job) -> ParsedMessage | tuple[str, str]:
    return _parse_with(_WORKER_STORE[0], job)


def _noop() -> int:
    return 0


def _chunks(items: Sequence[Job]) -> Iterator[Sequence[Job]]:
    """Runs of ``items``: ``BATCH`` messages at most, and ``BATCH_BYTES`` unless one message
    alone weighs more (see ``BATCH_BYTES``)."""
    heaviest = INDEX_BODY_BYTES + MAX_ATTACHMENTS_TEXT_CHARS
    start = weight = 0
    for end, (_, _, size) in enumerate(items):
        cost = min(max(size, 0), heaviest)
        if end > start and (end - start >= BATCH or weight + cost > BATCH_BYTES):
            yield items[start:end]
            start, weight = end, 0
        weight += cost
    if start < len(items):
        yield items[start:]


class _Parser:
    """Parsed batches in order: in a process pool, or in-process for a handful of messages.

    The pool is started (its workers forked) in ``__init__``, before the caller opens the
    Tantivy writer, so no child inherits the writer's threads.
    """

    def __init__(self, root: Path, jobs: Sequence[Job], *, workers: int = WORKERS) -> None:
        self.root = root
        self.jobs = jobs
        self.pool: ProcessPoolExecutor | None = None
        return_large_blocks()
        if workers > 1 and len(jobs) >= INLINE_MAX:
            # fork: cheap, and it needs no importable __main__ (spawn/forkserver would re-run
            # `python -m mailvault` in every worker).  The pool is forked before any tantivy
            # object exists here, and children run pure-Python parsing only.
            methods = multiprocessing.get_all_start_methods()
            method = "fork" if "fork" in methods else "spawn"
            context = multiprocessing.get_context(method)
            self.pool = ProcessPoolExecutor(
                workers,
                mp_context=context,
                initializer=_worker_init,
                initargs=(str(root), os.getpid()),
            )
            self.pool.submit(_noop).result()

    def batches(self) -> Iterator[list[ParsedMessage | tuple[str, str]]]:
        if self.pool is None:
            store = BlobStore(self.root)
            for chunk in _chunks(self.jobs):
                yield [_parse_with(store, job) for job in chunk]
            return
        chunks = list(_chunks(self.jobs))
        in_flight: deque[tuple[int, Iterator[ParsedMessage | tuple[str, str]]]] = deque()
        done = 0  # chunks yielded
        try:
            for number, chunk in enumerate(chunks):
                in_flight.append((number, self.pool.map(_parse_job, chunk, chunksize=8)))
                if len(in_flight) >= 2:
                    yield list(in_flight[0][1])
                    in_flight.popleft()
                    done += 1
            while in_flight:
                yield list(in_flight[0][1])
                in_flight.popleft()
                done += 1
        except BrokenProcessPool:
            # A worker died (killed, out of memory): finish in this process instead.
            log.warning("a parse worker died; parsing the rest in the main process")
            self.close()
            store = BlobStore(self.root)
            for chunk in chunks[done:]:
                yield [_parse_with(store, job) for job in chunk]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None


# -- catalog queries ---------------------------------------------------------------------------


def _store_parsed(catalog: Catalog, items: Sequence[ParsedMessage]) -> None:
    from mailvault.parse_store import store_parsed

    if items:
        store_parsed(catalog, items)


def _rows(catalog: Catalog, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    return list(catalog.db.execute(sql, params).fetchall())


def _has(catalog: Catalog, table: str, column: str | None = None) -> bool:
    """Whether the catalog has this table (and column): newer migrations add provenance."""
    cols = {row[1] for row in _rows(catalog, f"PRAGMA table_info({table})")}
    return bool(cols) and (column is None or column in cols)


def _live(catalog: Catalog, alias: str = "m") -> str:
    """SQL condition: the message is not purged (a purge keeps a tombstone row)."""
    return f"{alias}.purged_at IS NULL" if _has(catalog, "messages", "purged_at") else "1"


def _all_messages(catalog: Catalog) -> list[Job]:
    return [
        (r[0], r[1], r[2])
        for r in _rows(
            catalog,
            f"SELECT m.sha256, m.first_ingest_at, m.size FROM messages m WHERE {_live(catalog)} "
            "ORDER BY m.first_ingest_at, m.sha256",
        )
    ]


def _unparsed(catalog: Catalog) -> list[Job]:
    return [
        (r[0], r[1], r[2])
        for r in _rows(
            catalog,
            "SELECT m.sha256, m.first_ingest_at, m.size FROM messages m "
            "LEFT JOIN message_meta p ON p.sha256 = m.sha256 "
            f"WHERE p.sha256 IS NULL AND {_live(catalog)} "
            "ORDER BY m.first_ingest_at, m.sha256",
        )
    ]


def _unindexed(catalog: Catalog) -> list[Job]:
    """Parsed rows not in the index, and rows whose provenance grew after they were indexed
    (the same content fetched by another account, or imported with ``--account``: a ledger
    ingest entry with an account, later than the indexing; see ``message_accounts``)."""
    sql = (
        "SELECT p.sha256, m.first_ingest_at, m.size FROM message_meta p "
        "JOIN messages m ON m.sha256 = p.sha256 WHERE p.indexed_at IS NULL "
        "UNION "
        "SELECT p.sha256, m.first_ingest_at, m.size FROM message_meta p "
        "JOIN messages m ON m.sha256 = p.sha256 JOIN ledger l ON l.sha256 = p.sha256 "
        "WHERE p.indexed_at IS NOT NULL AND l.kind = 'ingest' AND l.account IS NOT NULL "
        "AND l.at > p.indexed_at"
    )
    rows = _rows(catalog, sql)
    return sorted(((r[0], r[1], r[2]) for r in rows), key=lambda j: (j[1], j[0]))


def message_accounts(catalog: Catalog, digests: Sequence[str]) -> dict[str, list[str]]:
    """Every account a message came through (POP3, and `import --account`), as the ledger's
    ingest entries record them: hash-chained and append-only, where the uidls and imports
    rows can be edited, and holds (`account:` queries, through the index) and retention
    (per-account keep_days) must not be moved by an edit.  It also counts the mail of a
    server without UIDL, which has no uidls row."""
    found: dict[str, set[str]] = {}
    for start in range(0, len(digests), 400):
        chunk = list(digests[start : start + 400])
        marks = ",".join("?" * len(chunk))
        sql = (
            "SELECT sha256, account FROM ledger WHERE kind = 'ingest' AND account IS NOT NULL "
            f"AND sha256 IN ({marks})"
        )
        for sha256, account in _rows(catalog, sql, chunk):
            found.setdefault(sha256, set()).add(account)
    return {sha: sorted(accounts) for sha, accounts in found.items()}


# The parse rows a rebuild puts right: the identifiers (show looks Message-IDs up there) and
# the date (retention counts a message's age from it)
_REFRESHED = ("message_id", "in_reply_to", "thread_id", "date", "date_raw", "date_fallback")


def _refresh_ids(catalog: Catalog, items: Sequence[ParsedMessage]) -> None:
    """Put the rebuilt parse's identifiers and date into the catalog's parse rows where they
    differ: an older parser cut ``<abc def@example.com>`` at the space, and a date edited by
    hand (retention refuses to purge a message whose date disagrees with its blob) is read
    again.  One read per batch; a write only for the rows that changed."""
    if not items:
        return
    by_sha = {
        p.sha256: (
            p.message_id,
            p.in_reply_to,
            p.thread_id,
            p.date.isoformat() if p.date is not None else None,
            p.date_raw,
            int(p.date_fallback),
        )
        for p in items
    }
    marks = ",".join("?" * len(by_sha))
    rows = _rows(
        catalog,
        f"SELECT sha256, {', '.join(_REFRESHED)} FROM message_meta WHERE sha256 IN ({marks})",
        list(by_sha),
    )
    stale = []
    for row in rows:
        wanted = by_sha[row[0]]
        if wanted[3] is None:  # the parser always dates a message; keep the row's if not
            wanted = (*wanted[:3], row[4], *wanted[4:])
        if tuple(row[1:]) != wanted:
            stale.append((*wanted, row[0]))
    if stale:
        with catalog.transaction() as conn:
            conn.executemany(
                f"UPDATE message_meta SET {', '.join(c + ' = ?' for c in _REFRESHED)} "
                "WHERE sha256 = ?",
                stale,
            )


def _mark_indexed(catalog: Catalog, digests: Sequence[str], when: str | None) -> None:
    if not digests:
        return
    with catalog.transaction() as conn:
        conn.executemany(
            "UPDATE message_meta SET indexed_at = ? WHERE sha256 = ?",
            [(when, d) for d in digests],
        )


def _indexed_count(catalog: Catalog) -> int:
    return int(
        _rows(catalog, "SELECT count(*) FROM message_meta WHERE indexed_at IS NOT NULL")[0][0]
    )


# -- the pipeline ------------------------------------------------------------------------------


def _pipeline(
    vault: Vault,
    catalog: Catalog,
    jobs: Sequence[Job],
    needs_store: set[str],
    index_dir: Path,
    report: IndexReport,
    progress: Progress | None,
    *,
    mark: bool,
) -> list[str]:
    """Parse ``jobs``, store the new parse rows, index everything; returns the indexed sha256s.

    With ``mark``, ``indexed_at`` is set after each index commit (incremental mode); without,
    the caller does it after the swap (rebuild mode).
    """
    done_all: list[str] = []
    if not jobs:
        return done_all
    parser = _Parser(vault.root, jobs)
    writer: ix.IndexWriter | None = None
    try:
        index, _ = ix.create_or_open(index_dir, marker=mark)
        writer = ix.IndexWriter(index)
        uncommitted: list[str] = []
        last_commit = time.monotonic()
        done = text = 0

        def commit() -> None:
            nonlocal last_commit, text
            assert writer is not None
            writer.commit()
            if mark:
                _mark_indexed(catalog, uncommitted, utcnow())
            done_all.extend(uncommitted)
            uncommitted.clear()
            last_commit = time.monotonic()
            text = 0

        for batch in parser.batches():
            parsed = [p for p in batch if isinstance(p, ParsedMessage)]
            for p in batch:
                if not isinstance(p, ParsedMessage):
                    report.missing.append(p[0])
                    if len(report.missing) <= 10:
                        log.warning("%s", p[1])
                    elif len(report.missing) == 11:
                        log.warning("more blobs cannot be read; the report lists them all")
            fresh = [p for p in parsed if p.sha256 in needs_store]
            _store_parsed(catalog, fresh)
            if not mark:  # a rebuild: parse rows written by an older parser are not redone
                _refresh_ids(catalog, [p for p in parsed if p.sha256 not in needs_store])
            report.parsed += len(fresh)
            report.unreadable += sum(1 for p in fresh if p.unreadable)
            report.defective += sum(1 for p in fresh if p.defects)
            accounts = message_accounts(catalog, [p.sha256 for p in parsed])
            for p in parsed:
                writer.put(p, accounts.get(p.sha256, ()))
                uncommitted.append(p.sha256)
                text += len(p.body_text) + sum(len(a.text or "") for a in p.attachments)
            report.indexed += len(parsed)
            done += len(batch)
            if progress is not None:
                progress(done, len(jobs))
            if (
                len(uncommitted) >= COMMIT_EVERY
                or text >= COMMIT_TEXT
                or time.monotonic() - last_commit >= COMMIT_SECONDS
            ):
                commit()
        if uncommitted:
            commit()
    finally:
        parser.close()
        if writer is not None:
            writer.close()
    return done_all


def lag_note(exc: MailvaultError) -> str:
    """What a fetch or import says when indexing what it committed failed: the mail is safe,
    the index lags.  A damaged index already names its fix (`mailvault reindex`, which indexes
    everything), so it is not followed by a second, weaker one."""
    if isinstance(exc, IndexDamaged | IndexOutdated):
        return f"indexing failed: {exc}"
    return f"indexing failed: {exc}; run `mailvault index` to catch up"


def catch_up(vault: Vault, *, progress: Progress | None = None, exact: bool = False) -> IndexReport:
    """Parse what is unparsed and index what is unindexed (call under the vault write lock).

    ``exact``: make sure the index holds exactly the catalog's messages, whatever the counts
    say (before retention applies holds through it: an index restored from an old backup may
    hold as many documents as it should, but not the right ones)."""
    with _one_line_errors("indexing", vault.index_path):
        return _catch_up(vault, progress, exact)


def _catch_up(vault: Vault, progress: Progress | None, exact: bool = False) -> IndexReport:
    started = time.monotonic()
    report = IndexReport()
    index_dir = vault.index_path
    ix.recover(index_dir)
    catalog = vault.catalog()
    try:
        if not (index_dir / "meta.json").exists():
            # A new (or lost) index: whatever the catalog says was indexed is not any more.
            with catalog.transaction() as conn:
                conn.execute("UPDATE message_meta SET indexed_at = NULL")
        unparsed = _unparsed(catalog)
        fresh = {u[0] for u in unparsed}  # built once: in the comprehension, once per row
        jobs = unparsed + [j for j in _unindexed(catalog) if j[0] not in fresh]
        _pipeline(
            vault,
            catalog,
            jobs,
            fresh,
            index_dir,
            report,
            progress,
            mark=True,
        )
        report.repaired = _reconcile(vault, catalog, report, progress, exact)
        if not (index_dir / "meta.json").exists():
            ix.create_or_open(index_dir)  # nothing to index: still, searches answer "no hits"
        report.documents = ix.open_for_search(index_dir).searcher().num_docs
    finally:
        catalog.close()
    report.seconds = time.monotonic() - started
    return report


def _reconcile(
    vault: Vault,
    catalog: Catalog,
    report: IndexReport,
    progress: Progress | None,
    exact: bool = False,
) -> int:
    """Make the index hold what the catalog lists as indexed: re-add the missing, and delete
    documents of messages it does not list (purged by a retention run cut short before the
    index was updated, or from an index restored from a backup).

    A count comparison keeps this cheap on every run; ``exact`` checks every message anyway
    (an equal count can hide a different set).
    """
    index_dir = vault.index_path
    if not (index_dir / "meta.json").exists():
        return 0
    index = ix.open_for_search(index_dir)
    searcher = index.searcher()
    if not exact and searcher.num_docs == _indexed_count(catalog):
        return 0
    lost, extra, unnamed, doubled = _disagreeing(catalog, searcher, index.schema)
    if doubled:
        log.warning(
            "the index holds %d messages more than once; keeping one document of each",
            len(doubled),
        )
    if extra:
        log.warning(
            "the index holds %d messages the catalog does not list as indexed (purged, or "
            "unknown); deleting them",
            len(extra),
        )
    if unnamed:
        log.warning(
            "the index holds %d documents with no message id (a damaged index, or documents "
            "another tool wrote into it); deleting them",
            unnamed,
        )
    if extra or unnamed or doubled:
        writer = ix.IndexWriter(ix.create_or_open(index_dir)[0])
        writer.delete_many([*extra, *doubled])  # a doubled one is indexed again below
        if unnamed:
            writer.delete_without_id()
        writer.close()
        del writer
    if doubled:
        # A document of a doubled id may have named other messages too (a damaged index):
        # deleting it took them along, so what is lost is walked again once it is deleted.
        index = ix.open_for_search(index_dir)
        searcher = index.searcher()
        lost = _disagreeing(catalog, searcher, index.schema)[0]
    del index, searcher  # no tantivy threads around when the parse pool forks
    if not lost:
        return len(extra) + unnamed
    missing = len(lost) - len(doubled)
    if missing:
        log.warning(
            "the index lacks %d messages the catalog lists as indexed; re-adding them", missing
        )
    _mark_indexed(catalog, lost, None)
    _pipeline(vault, catalog, _jobs(catalog, lost), set(), index_dir, report, progress, mark=True)
    return len(lost) + len(extra) + unnamed


def _disagreeing(
    catalog: Catalog, searcher: Any, schema: Any
) -> tuple[list[str], list[str], int, list[str]]:
    """The messages the catalog lists as indexed that the index lacks or holds more than once
    (to index again), the ids of live documents of messages it does not list, how
    many live documents no id names (no id at all), and the ids held more than once (their
    documents are deleted before they are indexed again): left there, either of the last two
    would keep the counts apart and this walk run on every run; the catalog's listed messages
    (``ORDER BY sha256``) and the index's live ids (``ix.live_ids``) walked side by side, so that neither is held whole,
    and no term query per message."""
    listed = catalog.db.execute(
        "SELECT p.sha256 FROM message_meta p JOIN messages m ON m.sha256 = p.sha256 "
        "WHERE p.indexed_at IS NOT NULL ORDER BY p.sha256"
    )
    lost: list[str] = []
    extra: list[str] = []
    doubled: list[str] = []  # listed, and held by several documents: deleted, indexed again
    named = 0
    for sha256, is_listed, n in _side_by_side(
        (row[0] for row in listed), ix.live_ids(searcher, schema)
    ):
        named += n
        if is_listed and not n:
            lost.append(sha256)
        elif is_listed and n > 1:
            lost.append(sha256)
            doubled.append(sha256)
        elif not is_listed:
            extra.append(sha256)
    return lost, extra, max(searcher.num_docs - named, 0), doubled


def still_indexed(vault: Vault, sha256s: Iterable[str]) -> Iterator[str]:
    """Those of ``sha256s`` (in byte order) that a live document of the index holds: walked
    beside the index's live ids (``ix.live_ids``), so that neither side is held."""
    index = ix.open_for_search(vault.index_path)
    searcher = index.searcher()
    for sha256, listed, n in _side_by_side(sha256s, ix.live_ids(searcher, index.schema)):
        if listed and n:
            yield sha256


def _jobs(catalog: Catalog, digests: Sequence[str]) -> list[Job]:
    """The jobs that index these messages again, in the order given."""
    found: dict[str, Job] = {}
    for start in range(0, len(digests), 400):
        chunk = list(digests[start : start + 400])
        sql = (
            "SELECT sha256, first_ingest_at, size FROM messages "
            f"WHERE sha256 IN ({','.join('?' * len(chunk))})"
        )
        found.update((r[0], (r[0], r[1], r[2])) for r in _rows(catalog, sql, chunk))
    return [found[sha256] for sha256 in digests if sha256 in found]


def purged_text_lingers(vault: Vault) -> bool:
    """Whether the index files may still hold the text of purged messages: they carry
    deleted documents (Tantivy only marks a deletion; a rebuild removes the text) and were
    built before the last purge.  A retention run rebuilds the index after its purge; one
    killed before the rebuild finished leaves this.  Deleted documents of an index built
    since the last purge are re-indexed messages, no purged text."""
    import sqlite3

    if not ix.holds_deleted_documents(vault.index_path):
        return False
    db = sqlite3.connect(read_only_uri(vault.catalog_path), uri=True)
    try:
        last = db.execute("SELECT max(at) FROM ledger WHERE kind = 'purge'").fetchone()[0]
    finally:
        db.close()
    if last is None:
        return False
    built = (ix.read_marker(vault.index_path) or {}).get("created_at")
    try:
        return built is None or datetime.fromisoformat(built) <= datetime.fromisoformat(last)
    except (TypeError, ValueError):
        return True


def reindex(vault: Vault, *, progress: Progress | None = None) -> IndexReport:
    """Rebuild the index from the store and catalog into index.new/, then swap it in."""
    with _one_line_errors("rebuilding the index", vault.index_path):
        return _reindex(vault, progress)


@contextlib.contextmanager
def _one_line_errors(doing: str, index_dir: Path) -> Iterator[None]:
    """A full disk, a failing catalog or a damaged index as a MailvaultError, so that fetch
    and import, which index after committing, can still report what they committed."""
    try:
        yield
    except MailvaultError:
        raise
    except Exception as exc:
        error = from_storage_error(exc, doing)
        if error is None and _writer_stopped(exc):
            error = _writer_failure(exc, doing, index_dir)
        if error is None and ix.is_damage(exc):
            error = ix.damaged(index_dir, exc)
        if error is None:
            raise
        raise error from None
    except BaseException as exc:  # a panic in tantivy is no Exception
        if not ix.is_panic(exc):
            raise
        raise ix.damaged(index_dir, exc) from None


def _writer_stopped(exc: BaseException) -> bool:
    """Whether tantivy says its writer's threads stopped: an I/O error in one of them (a full
    disk, most often), whose own text tantivy does not pass on."""
    text = str(exc)
    return "index writer was killed" in text or "worker thread encountered an error" in text


def _writer_failure(exc: BaseException, doing: str, index_dir: Path) -> MailvaultError:
    from mailvault._fs import nearly_full
    from mailvault.errors import StoreError

    if nearly_full(index_dir.parent):
        return StoreError(
            f"disk full while {doing} in {index_dir}; free space on that filesystem and rerun: "
            "what was committed is kept"
        )
    text = " ".join(str(exc).split())
    return StoreError(
        f"{doing} failed: the index writer stopped on an I/O error ({text}); check the disk "
        f"holding {index_dir} and rerun `mailvault index`: what was committed is kept"
    )


def _reindex(vault: Vault, progress: Progress | None) -> IndexReport:
    started = time.monotonic()
    report = IndexReport(rebuilt=True)
    index_dir = vault.index_path
    ix.recover(index_dir)
    new = ix.new_path(index_dir)
    if new.exists():
        shutil.rmtree(new)
    catalog = vault.catalog()
    try:
        unparsed = {u[0] for u in _unparsed(catalog)}
        jobs = _all_messages(catalog)
        try:
            done = _pipeline(vault, catalog, jobs, unparsed, new, report, progress, mark=False)
            if not (new / "meta.json").exists():
                ix.create_or_open(new, marker=False)  # an empty vault still gets an (empty) index
            ix.write_marker(new, rebuilt=True)
        except BaseException:
            # an unfinished build is of no use (the next run starts again): it goes now, not
            # at the next run, for on a full disk it holds the space the error asks to free
            shutil.rmtree(new, ignore_errors=True)
            raise
        ix.swap_in(index_dir)
        # The new index holds exactly `done`; the catalog now says so, in one transaction: a
        # search counts the indexed messages (``message_counts``), and between a commit that
        # cleared them and the ones marking them again, saw nothing indexed.
        now = utcnow()
        with catalog.transaction() as conn:
            conn.execute("UPDATE message_meta SET indexed_at = NULL")
            conn.executemany(
                "UPDATE message_meta SET indexed_at = ? WHERE sha256 = ?", ((now, d) for d in done)
            )
        with contextlib.suppress(MailvaultError):
            report.documents = ix.open_for_search(index_dir).searcher().num_docs
    finally:
        catalog.close()
    report.seconds = time.monotonic() - started
    return report


# -- verification ------------------------------------------------------------------------------


def index_findings(vault: Vault, catalog_ids: Iterable[str], quick: bool = False) -> Iterator[Any]:
    """``mailvault verify``'s index check: is the index readable, and does it hold exactly the
    catalog's messages, once each?  Yields ``mailvault.verify.Finding``s (codes ``index-*``);
    changes nothing.  ``catalog_ids``: the live messages of verify's catalog snapshot, in byte
    order (``ORDER BY sha256``; a set is sorted first).

    Unless ``quick``, every byte of every segment file is read and checked against the
    checksum in its footer (damage anywhere, found before a search trips on it); then the
    catalog's ids and the index's id terms are walked side by side, both in order, so memory
    does not grow with the vault (``ix.live_ids``).
    """
    from mailvault.errors import IndexDamaged, SearchError
    from mailvault.verify import Finding

    if isinstance(catalog_ids, AbstractSet):
        catalog_ids = sorted(catalog_ids)
    index_dir = vault.index_path
    yield from _rebuild_findings(vault)
    # The catalog before the index: indexing commits documents before it marks them indexed,
    # so whatever the catalog says is indexed now is in a searcher opened after this.
    with _indexed_ids(vault) as indexed:
        try:
            index = ix.open_for_search(index_dir)
            path = ix.live_path(index_dir) or str(index_dir)
            if not quick:
                damage = list(_damaged_files(path))
                if damage:
                    yield from damage
                    return
            yield from _documents(vault, index, path, catalog_ids, indexed)
        except IndexDamaged as exc:
            yield Finding("index-damaged", "error", str(index_dir), str(exc))
        except SearchError as exc:
            yield Finding("index-unreadable", "warning", "index", str(exc))


def _rebuild_findings(vault: Vault) -> Iterator[Any]:
    """A rebuild a retention run did not finish: purged text still in the index files (a
    warning: that text is readable from them and their backups), and an ``index.new/`` left
    by a rebuild that was interrupted (a note: the next run removes it)."""
    import sqlite3

    from mailvault.verify import Finding

    writer = vault.writer()
    try:
        lingering = writer is None and purged_text_lingers(vault)
    except (OSError, sqlite3.Error):
        lingering = False
    if lingering:
        yield Finding(
            "index-purged-text",
            "warning",
            "index",
            "the index files still hold the text of purged messages (deleted documents: a "
            "retention run stopped before it rebuilt the index, or one by an older mailvault, "
            "which did not rebuild it); `mailvault index` or "
            "`mailvault retention apply` finishes the rebuild (`mailvault reindex` does it "
            "alone)",
        )
    new = ix.new_path(vault.index_path)
    if os.path.lexists(new):
        what = (
            f"being built by {writer}"
            if writer is not None
            else "left by a rebuild that was interrupted; the next `mailvault index`, "
            "`reindex` or `retention apply` removes it"
        )
        yield Finding("index-rebuild-leftover", "info", str(new), f"{new} is {what}")


@contextlib.contextmanager
def _indexed_ids(vault: Vault) -> Iterator[_Ordered]:
    """The messages the catalog says are indexed, as of now, in byte order: read from one
    snapshot, taken here (the first read of a transaction) and walked as the check goes."""
    import sqlite3

    db = sqlite3.connect(read_only_uri(vault.catalog_path), uri=True, isolation_level=None)
    try:
        db.execute("BEGIN")
        rows = db.execute(
            "SELECT sha256 FROM message_meta WHERE indexed_at IS NOT NULL ORDER BY sha256"
        )  # stepped once here: the snapshot is taken
        yield _Ordered(row[0] for row in rows)
    finally:
        db.close()


class _Ordered:
    """A sorted stream of ids, asked about ids in increasing order: membership in constant
    memory, each id of the stream read once."""

    def __init__(self, ids: Iterator[str]) -> None:
        self.ids = ids
        self.head: str | None = next(self.ids, None)

    def has(self, sha256: str) -> bool:
        while self.head is not None and self.head < sha256:
            self.head = next(self.ids, None)
        return self.head == sha256


def _side_by_side(
    catalog: Iterable[str], index: Iterator[tuple[str, int]]
) -> Iterator[tuple[str, bool, int]]:
    """Each id of the catalog's and of the index's (both in byte order) once: whether the
    catalog lists it, and how many live documents hold it."""
    held = next(index, None)
    last = ""
    for sha256 in catalog:
        if sha256 < last:
            raise ValueError(f"catalog ids out of order: {sha256} after {last}")
        last = sha256
        while held is not None and held[0] < sha256:
            yield held[0], False, held[1]
            held = next(index, None)
        n = 0
        if held is not None and held[0] == sha256:
            n, held = held[1], next(index, None)
        yield sha256, True, n
    while held is not None:
        yield held[0], False, held[1]
        held = next(index, None)


def _damaged_files(path: str) -> Iterator[Any]:
    from mailvault.verify import Finding

    try:
        for file, problem in ix.check_files(path):
            yield Finding(
                "index-damaged",
                "error",
                file,
                f"{problem}: the search index is damaged; `mailvault reindex` rebuilds it",
            )
    except (OSError, ValueError) as exc:  # meta.json itself: tantivy could open it just now
        yield Finding(
            "index-damaged", "error", path, str(ix.damaged(path, f"cannot list its files: {exc}"))
        )


def _unnamed(num_docs: int, named: int) -> Iterator[Any]:
    """Live documents the id walk did not name: one with no ``id`` (a damaged index, or
    documents another tool wrote into it) is invisible to the walk, though a search finds
    it (and leaves it out, with a warning).  More named than held: a document with several ids.  Both from one
    searcher, so a writer committing meanwhile is no cause."""
    from mailvault.verify import Finding

    if named == num_docs:
        return
    if named < num_docs:
        n = num_docs - named
        what = (
            f"{n} index document{'' if n == 1 else 's'} hold{'s' if n == 1 else ''} no message "
            "id (a damaged index, or documents another tool wrote into it): no catalog message "
            f"stands behind {'it' if n == 1 else 'them'}"
        )
        fix = f"`mailvault index --exact` deletes {'it' if n == 1 else 'them'}, "
    else:
        what = (
            f"the index's ids name {named} documents but it holds {num_docs} (a document with "
            "several ids: a damaged index, or one another tool wrote)"
        )
        fix = ""
    yield Finding(
        "index-ids-mismatch",
        "warning",
        "index",
        f"{what}; {fix}`mailvault reindex` (or `verify --repair-index`) rebuilds the index",
    )


class _Now:
    """The catalog as it is now, not as in verify's snapshot: for findings a writer that
    committed since explains (fetch, import, index and retention run while verify reads, and
    take no notice of it)."""

    def __init__(self, vault: Vault) -> None:
        import sqlite3

        self.vault = vault
        self.db = sqlite3.connect(read_only_uri(vault.catalog_path), uri=True)

    def missing(self, sha256: str) -> str:
        """A message the catalog called indexed and the index lacks: "missing", or "purged"
        since (its document deleted), "pending" (unmarked since, to be indexed again: a lost
        index, say), "in-flight" (while a writer holds the vault)."""
        row = self.row(sha256)
        if row is None or row[0] is not None:
            return "purged"
        if row[1] is None:
            return "pending"
        return "in-flight" if self.vault.writer() is not None else "missing"

    def extra(self, sha256: str) -> str:
        """A document of a message not in verify's snapshot: "extra", or "committed" since
        (and indexed), "in-flight" (a retention run deleting what it purged, say)."""
        row = self.row(sha256)
        if row is not None and row[0] is None:
            return "committed"
        return "in-flight" if self.vault.writer() is not None else "extra"

    def purged(self, sha256: str) -> bool:
        """Whether the catalog lists the message as purged now."""
        row = self.row(sha256)
        return row is not None and row[0] is not None

    def row(self, sha256: str) -> tuple[Any, ...] | None:
        """(purged_at, indexed_at) of a message now, None when the catalog has no row."""
        query = (
            "SELECT m.purged_at, p.indexed_at FROM messages m "
            "LEFT JOIN message_meta p ON p.sha256 = m.sha256 WHERE m.sha256 = ?"
        )
        row: tuple[Any, ...] | None = self.db.execute(query, (sha256,)).fetchone()
        return row

    def close(self) -> None:
        self.db.close()


def _documents(
    vault: Vault,
    index: Any,
    path: str,
    catalog_ids: Iterable[str],
    indexed: _Ordered,
) -> Iterator[Any]:
    from mailvault.verify import Finding

    with ix.reading(path):
        searcher = index.searcher()
    schema = index.schema

    def walked() -> Iterator[tuple[str, int]]:
        ids = ix.live_ids(searcher, schema)
        while True:
            with ix.reading(path):
                item = next(ids, None)
            if item is None:
                return
            yield item

    now = _Now(vault)
    pending = in_flight = 0
    extra: list[str] = []  # documents of messages the catalog does not list: problems only
    named = 0  # the live documents the walked ids name, each as often as it holds one
    try:
        for sha256, listed, n in _side_by_side(catalog_ids, walked()):
            named += n
            if not listed:
                extra.append(sha256)
            elif n == 0 and indexed.has(sha256):
                kind = now.missing(sha256)
                pending += kind == "pending"
                in_flight += kind == "in-flight"
                if kind == "missing":
                    yield Finding(
                        "index-missing",
                        "warning",
                        sha256,
                        "the catalog says this message is indexed but the index lacks it; "
                        "`mailvault index --exact` re-adds it",
                    )
            elif n == 0:
                pending += 1
            elif n > 1:
                yield Finding(
                    "index-duplicate",
                    "warning",
                    sha256,
                    f"{n} index documents for one message; `mailvault index --exact` keeps one",
                )
        purged: list[str] = []
        for term in extra:
            kind = now.extra(term)
            in_flight += kind == "in-flight"
            if kind == "extra" and now.purged(term):
                purged.append(term)
            elif kind == "extra":
                yield Finding(
                    "index-extra",
                    "warning",
                    term,
                    f"the index holds message {term}, which the catalog does not list; "
                    "`mailvault index --exact` deletes it, `mailvault reindex` rebuilds the index",
                )
        if purged:  # a retention run cut short: one finding, not one line per message
            yield Finding(
                "index-extra",
                "warning",
                purged[0] if len(purged) == 1 else "index",
                f"the index still holds {len(purged)} purged message"
                f"{'' if len(purged) == 1 else 's'} (a retention run stopped before it "
                "deleted their documents; the first is "
                f"{purged[0]}); `mailvault index` deletes them and rebuilds the index",
            )
    finally:
        now.close()
    yield from _unnamed(searcher.num_docs, named)
    if pending:
        yield Finding(
            "index-pending",
            "info",
            "index",
            f"{pending} messages are not indexed yet; `mailvault index` catches up",
        )
    if in_flight:
        yield Finding(
            "index-in-flight",
            "info",
            "index",
            f"{in_flight} index document(s) disagree with the catalog while "
            f"{vault.writer() or 'another command'} writes to the vault: not reported as "
            "missing or extra; run verify again when it is done",
        )
