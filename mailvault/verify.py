"""`mailvault verify`: prove the vault is whole, reporting every finding, not only the first.

Problems are data, not exceptions (as in git fsck / borg check): each check yields ``Finding``s
and the CLI decides how to print them and which exit code to use.  Nothing is repaired here
except what is derived (the index, with ``repair_index``); the truth is never "fixed" silently.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import operator
import os
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zstandard

from mailvault import ledger
from mailvault._fs import nearly_full
from mailvault.errors import MailvaultError, UsageError
from mailvault.store import BlobStore, open_file, read_hashed
from mailvault.vault import Vault, read_only_uri


@dataclass(frozen=True, slots=True)
class Finding:
    code: str  # e.g. blob-corrupt, blob-missing, blob-orphan, ledger-broken
    severity: str  # error | warning | info
    subject: str  # what: a sha256, a table row, a ledger sequence number
    detail: str  # one line: what is wrong and where

    def as_json(self) -> dict[str, str]:
        return {
            "code": self.code,
            "severity": self.severity,
            "subject": self.subject,
            "detail": self.detail,
        }


# (vault, the live messages of verify's catalog snapshot in byte order, quick) -> findings
IndexCheck = Callable[[Vault, Iterable[str], bool], Iterator[Finding]]


def _blobs(
    vault: Vault,
    catalog: Iterable[tuple[str, bool]],
    quick: bool,
    committed_since: Callable[[str], bool] = lambda digest: False,
    purged_since: Callable[[str], bool] = lambda digest: False,
    dated: Callable[[str, bytes], Iterator[Finding]] = lambda digest, head: iter(()),
) -> Iterator[Finding]:
    """The store against the catalog; unless ``quick``, every blob hashed, and ``dated``
    given the head of each live message whose blob is whole.  ``catalog``: (sha256, purged)
    of every message row, in byte order (``ORDER BY sha256``), walked beside the store's
    blobs (which ``BlobStore.entries`` gives in that order), so that neither side is held."""
    store = vault.read_store()  # reading needs no config: verify must work when it is broken
    rows = _CatalogWalk(iter(catalog))
    unlisted: list[tuple[Path, str]] = []  # blobs without a catalog row: decided after the walk
    purging: list[tuple[Path, str]] = []  # blobs of purged messages: likewise
    for path, digest in store.entries():  # one pass over objects/: blobs, strays, their modes
        yield from _permission(str(path))
        if digest is None:
            yield Finding(
                "blob-stray",
                "warning",
                str(path),
                f"{path} is not a blob (a stray file in the object store); move it out of the "
                "vault",
            )
            continue
        purged = rows.find(digest)  # None: no catalog row
        if purged:
            purging.append((path, digest))
            continue
        # (a blob a writer committed after verify took its snapshot of the catalog is fine)
        if purged is None and not committed_since(digest):
            unlisted.append((path, digest))
        if quick:
            continue
        try:
            actual, head = _rehash(path)
        except (zstandard.ZstdError, OSError, MailvaultError) as exc:
            if purged_since(digest):  # a retention run removed it while it was read
                continue
            yield Finding(
                "blob-unreadable",
                "error",
                digest,
                f"blob {path} cannot be read: {exc}",
            )
            continue
        if actual != digest:
            yield Finding(
                "blob-corrupt",
                "error",
                digest,
                f"blob {path} hashes to {actual}: its content changed",
            )
        elif purged is not None:
            yield from dated(digest, head)
    missing = rows.missing()
    yield from _unlisted(vault, store.objects, unlisted, committed_since)
    yield from _purging(vault, store.objects, purging)
    for digest in missing:
        if purged_since(digest):
            continue  # purged (and its blob removed) after verify's snapshot
        yield Finding(
            "blob-missing",
            "error",
            digest,
            f"catalog lists message {digest} but its blob is missing",
        )
    if store.tmp.exists():
        leftovers = list(store.tmp.iterdir())
        if leftovers:
            writer = vault.writer()
            what = (
                f"being written by {writer}"
                if writer is not None
                else "left by an interrupted fetch or import, which the next one removes"
            )
            yield Finding(
                "tmp-leftover", "info", str(store.tmp), f"{len(leftovers)} in tmp/: {what}"
            )


class _CatalogWalk:
    """The catalog's message rows, (sha256, purged) in byte order, asked about the store's
    blobs in the same order: each row is read once, and the live messages the walk passes
    without a blob are kept (the missing ones: found, not the catalog)."""

    def __init__(self, rows: Iterator[tuple[str, bool]]) -> None:
        self.rows = rows
        self.head = next(rows, None)
        self.seen = False  # whether a blob of the head row was found
        self.passed: list[str] = []  # live messages without a blob

    def find(self, digest: str) -> bool | None:
        """Whether the message of a blob is purged; None when the catalog has no row for it.
        ``digest``s come in order, each as often as the store holds it."""
        while self.head is not None and self.head[0] < digest:
            self._next()
        if self.head is None or self.head[0] != digest:
            return None
        self.seen = True
        return bool(self.head[1])

    def missing(self) -> list[str]:
        """Once every blob was asked about: the live messages without one, in order."""
        while self.head is not None:
            self._next()
        return self.passed

    def _next(self) -> None:
        assert self.head is not None
        if not self.seen and not self.head[1]:
            self.passed.append(self.head[0])
        self.head, self.seen = next(self.rows, None), False


def _rehash(path: Path) -> tuple[str, bytes]:
    """The sha256 of a blob file's content and its first bytes (``blobdate.read_head``), in
    one read: the file walked, not the one the store would pick for its digest (with both a
    compressed and a plain copy, the one it does not pick would never be checked)."""
    from mailvault.blobdate import read_head

    hashing = hashlib.sha256()
    head = read_head(read_hashed(open_file(path), hashing))
    return hashing.hexdigest(), head


def _dates(db: sqlite3.Connection, store: BlobStore) -> Callable[[str, bytes], Iterator[Finding]]:
    """The check of a message's catalog date against its blob's Date header: retention
    counts the age from the catalog's, so one moved back by hand would purge recent mail (it
    refuses to, and this says why).  A quick reading of the header first; the whole message
    is parsed only when that disagrees."""
    from mailvault.blobdate import blob_date, catalog_date

    def dated(digest: str, head: bytes) -> Iterator[Finding]:
        try:
            row = db.execute(
                "SELECT date, date_fallback FROM message_meta WHERE sha256 = ?", (digest,)
            ).fetchone()
        except sqlite3.OperationalError:  # no parse tables: nothing to compare
            return
        if row is None:  # not parsed yet (index-pending says so)
            return
        try:
            catalog = catalog_date(row[0], row[1])
        except ValueError as exc:
            yield Finding(
                "catalog-date-disagrees",
                "error",
                digest,
                f"the catalog's date of message {digest}, {exc} (edited by hand?): retention "
                "does not purge it while it is; `mailvault reindex` reads the date again",
            )
            return
        try:
            derived = blob_date(store, digest, head, catalog)
        except (MailvaultError, OSError, ValueError, zstandard.ZstdError):
            return  # changed since it was hashed: the next run reports it
        if derived == catalog:
            return
        says = f"says {derived.isoformat()}" if derived else "has no readable date"
        yield Finding(
            "catalog-date-disagrees",
            "error",
            digest,
            f"the catalog dates message {digest} "
            f"{catalog.isoformat() if catalog else 'by its ingest'} but its Date header {says} "
            "(edited by hand, or parsed by an older mailvault): retention does not purge it "
            "while they differ; `mailvault reindex` reads the date again",
        )

    return dated


def _unlisted(
    vault: Vault,
    objects: Path,
    blobs: list[tuple[Path, str]],
    committed_since: Callable[[str], bool],
) -> Iterator[Finding]:
    """Blobs the walk found without a catalog row: orphans, unless a writer explains them.

    Asked after the walk, not before it: a fetch or import that took the lock during the walk
    publishes its blobs before it commits their rows.  The writer first, the catalog second: a
    writer gone by then has committed its rows (or died, and left orphans)."""
    if not blobs:
        return
    writer = vault.writer()
    blobs = [(path, digest) for path, digest in blobs if not committed_since(digest)]
    if writer is not None and blobs:
        yield Finding(
            "blob-in-flight",
            "info",
            str(objects),
            f"{len(blobs)} blob(s) without a catalog row while {writer} writes to the vault: "
            "not checked as orphans; run verify again when it is done",
        )
        return
    for path, digest in blobs:
        yield Finding(
            "blob-orphan",
            "warning",
            digest,
            f"blob {path} has no catalog row (an interrupted fetch or import leaves these; "
            "the next fetch or import of that message adopts it)",
        )


def _purging(vault: Vault, objects: Path, blobs: list[tuple[Path, str]]) -> Iterator[Finding]:
    """Blobs of messages marked purged: a retention run removing them, or an unfinished purge
    (asked after the walk, as for ``_unlisted``; a blob removed since was being purged)."""
    if not blobs:
        return
    writer = vault.writer()
    blobs = [(path, digest) for path, digest in blobs if path.exists()]
    if writer is not None and blobs:
        yield Finding(
            "blob-in-flight",
            "info",
            str(objects),
            f"{len(blobs)} blob(s) of purged messages while {writer} writes to the vault: a "
            "purge in progress; run verify again when it is done",
        )
        return
    for path, digest in blobs:
        yield Finding(
            "blob-purge-unfinished",
            "warning",
            digest,
            f"blob {path} belongs to a message marked purged: an interrupted "
            "purge (the next `retention apply` removes it), or an edited catalog (then "
            "ledger-missing says so)",
        )


def _catalog(db: sqlite3.Connection) -> Iterator[Finding]:
    from mailvault.catalog import migrations, newer_catalog_message

    (found,) = db.execute("PRAGMA user_version").fetchone()
    known = migrations()[-1][0]
    if found > known:  # the checks below would read it as this version's
        yield Finding(
            "catalog-newer",
            "error",
            "catalog.sqlite",
            newer_catalog_message(Path("catalog.sqlite"), found, known),
        )
    for (result,) in db.execute("PRAGMA integrity_check"):
        if result != "ok":
            yield Finding("catalog-corrupt", "error", "catalog.sqlite", result)
    for table, rowid, parent, _ in db.execute("PRAGMA foreign_key_check"):
        yield Finding(
            "catalog-dangling",
            "error",
            f"{table} row {rowid}",
            f"{table} row {rowid} refers to a {parent} row that does not exist",
        )


def _ledger(db: sqlite3.Connection) -> Iterator[Finding]:
    """The ledger's hash chain, then the catalog against the ledger, both ways.

    Memory does not grow with the vault: the chain is checked an entry at a time, and each
    cross-check is one query that SQLite sorts by the key both sides share (a catalog table's
    rows and the ledger's entries, interleaved), walked a key at a time.  Only what is found
    is kept, to be reported in the order verify always reported it."""
    for problem in ledger.chain_problems(ledger.iter_entries(db)):
        yield Finding("ledger-broken", "error", problem.split(":")[0], problem)
    contents = _contents(db)
    yield from (finding for _, finding in contents.messages)
    yield from contents.unrecorded_purges
    yield from contents.unmarked_purges
    yield from _imports(db)
    yield from hold_findings(db, hold_entries(db))
    yield from contents.rows_missing
    yield from _uidls(db)


@dataclass
class _ByContent:
    """What ``_contents`` found, apart, for ``_ledger`` to report in its order."""

    messages: list[tuple[int, Finding]]  # (catalog rowid, finding): in the catalog's order
    unrecorded_purges: list[Finding]  # purged in the catalog, not in the ledger
    unmarked_purges: list[Finding]  # purged in the ledger, not in the catalog
    rows_missing: list[Finding]  # ingested, never purged, and no catalog row


# Every message row beside the ingest and purge entries of its content, sorted by sha256
# (SQLite merges the two tables' sha256 indexes): (sha256, side, order, size, time, purged),
# side 0 a message row (order: its rowid), 1 a ledger entry (order: its seq)
_CONTENTS = """
    SELECT sha256, 0, rowid, size, first_ingest_at, purged_at IS NOT NULL FROM messages
    UNION ALL
    SELECT sha256, 1, seq, size, at, kind = 'purge' FROM ledger
    WHERE kind IN ('ingest', 'purge')
    ORDER BY 1, 2, 3"""


def _contents(db: sqlite3.Connection) -> _ByContent:
    """The catalog's messages against the ledger's ingests and purges, a content at a time."""
    found = _ByContent([], [], [], [])
    for sha256, rows in itertools.groupby(db.execute(_CONTENTS), key=operator.itemgetter(0)):
        _content(sha256, rows, found)
    found.messages.sort(key=operator.itemgetter(0))  # stable: a row's findings keep their order
    return found


def _content(sha256: str, rows: Iterable[tuple[Any, ...]], found: _ByContent) -> None:
    """One content's message rows (at most one, by its primary key) and ledger entries."""
    messages: list[tuple[int, int, str, bool]] = []  # (rowid, size, first_ingest_at, purged)
    first_at: str | None = None  # of its first ingest
    size = None  # as its last ingest recorded it
    ingested = purge_recorded = False
    for _, side, order, row_size, at, purged in rows:
        if side == 0:
            messages.append((order, row_size, at, bool(purged)))
        elif purged:
            purge_recorded = True
        else:
            first_at = at if not ingested else first_at
            size, ingested = row_size, True
    for rowid, row_size, stored_at, _ in messages:
        for finding in _message(sha256, row_size, stored_at, first_at, ingested, size):
            found.messages.append((rowid, finding))
    marked = any(purged for *_, purged in messages)
    if marked and not purge_recorded:
        found.unrecorded_purges.append(_unrecorded_purge(sha256))
    if purge_recorded and not marked:
        found.unmarked_purges.append(_unmarked_purge(sha256, bool(messages)))
    if ingested and not purge_recorded and not messages:
        found.rows_missing.append(
            Finding(
                "catalog-row-missing",
                "error",
                sha256,
                f"the ledger records the ingest of {sha256} but the catalog has no row for it and no purge was recorded",
            )
        )


def _message(
    sha256: str,
    size: int,
    stored_at: str,
    first_at: str | None,
    ingested: bool,
    recorded_size: int | None,
) -> Iterator[Finding]:
    """A message row against its content's ingest entries."""
    yield from _first_ingest(sha256, stored_at, first_at)
    if not ingested:
        yield Finding(
            "ledger-missing",
            "error",
            sha256,
            f"message {sha256} is in the catalog but was never recorded in the ledger",
        )
    elif recorded_size != size:
        yield Finding(
            "ledger-disagrees",
            "error",
            sha256,
            f"catalog says message {sha256} has {size} bytes, the ledger says {recorded_size}",
        )


# Every UIDL row beside the ingest and deletion entries of its (account, uidl, sha256), sorted
# by that key: (account, uidl, sha256, side, order, what), side 0 a UIDL row (order: its id,
# what: deleted_confirmed_at), 1 a ledger entry (order: its seq, what: its kind)
_UIDLS = """
    SELECT account, uidl, sha256, 0, id, deleted_confirmed_at FROM uidls
    UNION ALL
    SELECT account, uidl, sha256, 1, seq, kind FROM ledger
    WHERE kind IN ('ingest', 'server-delete', 'server-gone', 'mailbox-changed')
    ORDER BY 1, 2, 3, 4, 5"""


def _uidls(db: sqlite3.Connection) -> Iterator[Finding]:
    """The UIDL rows against the ledger's ingests and deletions, a (account, uidl, sha256) at
    a time, counted on both sides (a UIDL the server reuses after a deletion has a row and an
    ingest each time).  Each kind of finding in the order of its key's first row or entry."""
    found: dict[str, list[tuple[int, Finding]]] = {code: [] for code in _UIDL_FINDINGS}
    for (account, uidl, _), group in itertools.groupby(
        db.execute(_UIDLS), key=operator.itemgetter(0, 1, 2)
    ):
        # how many of the key's rows, rows marked deleted, ingests and deletion entries, and
        # the id or seq of each kind's first (``group`` is in order of side, then id or seq)
        n: Counter[str] = Counter()
        first: dict[str, int] = {}
        for *_, side, order, what in group:
            for kind in _uidl_kinds(side, what):
                n[kind] += 1
                first.setdefault(kind, order)
        known = account is not None and uidl is not None
        for what, kind, wrong in (  # each wrong only with one of ``kind`` at least
            ("unrecorded", "row", n["ingest"] < n["row"]),
            ("lost", "ingest", known and n["row"] < n["ingest"]),
            ("undeleted", "confirmed", n["gone"] < n["confirmed"]),
            ("unmarked", "gone", n["confirmed"] < n["gone"] <= n["row"]),
        ):
            if wrong:
                code, text = _UIDL_FINDINGS[what]
                finding = Finding(code, "error", f"{account}/{uidl}", text.format(account, uidl))
                found[what].append((first[kind], finding))
    for findings in found.values():
        findings.sort(key=operator.itemgetter(0))
        yield from (finding for _, finding in findings)


# What the UIDL check finds, in the order it reports it: {0} the account, {1} the UIDL
_UIDL_FINDINGS = {
    "unrecorded": (  # a row without its ingest
        "ledger-missing",
        "UIDL {1} of account {0} is in the catalog but its ingest is not in the ledger",
    ),
    "lost": (  # an ingest without its row (a UIDL row is never deleted, only marked)
        "catalog-row-missing",
        "the ledger records the ingest of UIDL {1} of account {0} but the catalog has no row "
        "for it (a fetch would download it again)",
    ),
    "undeleted": (  # a deletion marked, not recorded
        "ledger-missing",
        "UIDL {1} of account {0} is marked deleted but the deletion is not in the ledger",
    ),
    "unmarked": (  # the other way: a deletion un-marked by hand
        "ledger-disagrees",
        "the ledger records the deletion of UIDL {1} of account {0} but the catalog does "
        "not mark it deleted (edited by hand?): fetch would take it for mail still on the "
        "server",
    ),
}


def _uidl_kinds(side: int, what: Any) -> tuple[str, ...]:
    """Which of ``_uidls``' counts a row of ``_UIDLS`` adds to."""
    if side == 1:
        return ("ingest",) if what == "ingest" else ("gone",)
    return ("row", "confirmed") if what else ("row",)  # what: deleted_confirmed_at


# Every imports row beside the ingest entries of its (label, sha256), sorted by that key:
# (label, sha256, side, detail), side 0 an imports row, 1 an ingest entry (detail: its detail)
_IMPORTS = """
    SELECT account, sha256, 0, NULL FROM imports
    UNION ALL
    SELECT account, sha256, 1, detail FROM ledger WHERE kind = 'ingest'
    ORDER BY 1, 2"""


def _imports(db: sqlite3.Connection) -> Iterator[Finding]:
    """The imports rows against the ledger's import ingests, by (label, sha256), both ways: a
    label is what holds (`account:`) and per-label retention go by, so one edited by hand
    must be reported (mailvault itself reads labels from the ledger)."""
    try:
        rows = db.execute(_IMPORTS)
    except sqlite3.OperationalError:  # before the imports table
        return
    listed_more: list[tuple[tuple[Any, Any], int]] = []  # ((label, sha256), by how many)
    recorded_more: list[tuple[tuple[Any, Any], int]] = []
    for key, group in itertools.groupby(rows, key=operator.itemgetter(0, 1)):
        listed = recorded = 0
        for *_, side, detail in group:
            if side == 0:
                listed += 1
            elif str(ledger.parse_detail(detail).get("source", "")).startswith("import:"):
                recorded += 1
        if listed > recorded:
            listed_more.append((key, listed - recorded))
        elif recorded > listed:
            recorded_more.append((key, recorded - listed))
    for extra, where, other in (
        (listed_more, "the catalog's imports rows", "the ledger records"),
        (recorded_more, "the ledger", "the catalog's imports rows hold"),
    ):
        for (label, sha256), count in sorted(extra, key=str):
            yield Finding(
                "ledger-disagrees",
                "error",
                sha256,
                f"{where} list message {sha256} under label {label!r} {count} time(s) more "
                f"than {other} (edited by hand?); mailvault goes by the ledger's labels",
            )


def _first_ingest(sha256: str, stored_at: str, recorded: str | None) -> Iterator[Finding]:
    """A message's first ingest, the catalog's against its first ledger entry: retention
    counts the age of a message without a readable Date header from the catalog's, so one
    moved back by hand would purge recent mail.  The two are taken a moment apart."""
    from mailvault.blobdate import ingests_agree

    if recorded is None:
        return  # ledger-missing says so
    if not ingests_agree(stored_at, recorded):
        yield Finding(
            "ledger-disagrees",
            "error",
            sha256,
            f"the catalog says message {sha256} was first stored at {stored_at}, the ledger "
            f"at {recorded} (edited by hand?): retention does not purge it while they differ",
        )


def _unrecorded_purge(sha256: str) -> Finding:
    """Retention's purges are checked both ways: one the ledger does not record, or one the
    catalog no longer shows (a tombstone removed, or purged_at cleared), is an edited
    catalog.  This is the first way."""
    return Finding(
        "ledger-missing",
        "error",
        sha256,
        f"message {sha256} is marked purged but no purge is in the ledger (the catalog "
        "was edited?); retention will not remove its blob",
    )


def _unmarked_purge(sha256: str, in_catalog: bool) -> Finding:
    """A purge the ledger records and the catalog does not mark: ``in_catalog``, whether the
    message still has its row."""
    if not in_catalog:
        return Finding(
            "catalog-row-missing",
            "error",
            sha256,
            f"the ledger records the purge of message {sha256} but the catalog has no row "
            "(its tombstone was deleted by hand?): a fetch would download it again",
        )
    return Finding(
        "ledger-disagrees",
        "error",
        sha256,
        f"the ledger records the purge of message {sha256} but the catalog does not "
        "mark it purged (edited by hand?): it counts as live mail whose blob is gone",
    )


# A hold as the ledger tells it: [query, released, detail of its hold-add, syntax], one per
# hold-add, in order (an entry without "syntax" was written before holds recorded it: version
# 1, catalog.sql migration 7); as the catalog tells it: (query, released, reason, created_by,
# syntax)
_LedgerHold = list[Any]
_HoldRow = tuple[str, bool, str | None, str | None, int]


HOLD_KINDS = ("hold-add", "hold-release")


def hold_entries(db: sqlite3.Connection) -> list[dict[str, Any]]:
    """The ledger's hold-add and hold-release entries, in order (retention reads these
    alone, not the whole ledger)."""
    fields = (*ledger.LEDGER_FIELDS, "entry_hash")
    marks = ",".join("?" * len(HOLD_KINDS))
    cursor = db.execute(
        f"SELECT {', '.join(fields)} FROM ledger WHERE kind IN ({marks}) ORDER BY seq",
        HOLD_KINDS,
    )
    return [dict(zip(fields, row, strict=True)) for row in cursor]


def hold_findings(db: sqlite3.Connection, entries: list[dict[str, Any]]) -> Iterator[Finding]:
    """Legal holds, the catalog's rows against the ledger's hold-add and hold-release
    entries, name by name and in order: a hold released, narrowed, removed or invented by
    editing catalog.sqlite changes what retention protects without a trace anywhere else.
    ``entries``: the ledger's entries (all of them, or ``hold_entries``).  Verify reports
    these; retention refuses to purge while there is one."""
    recorded: dict[str, list[_LedgerHold]] = {}
    for entry in entries:
        if entry["kind"] in HOLD_KINDS:
            detail = _detail(entry)
            holds = recorded.setdefault(str(detail.get("name")), [])
            syntax = detail.get("syntax", 1)
            if entry["kind"] == "hold-add":
                holds.append([detail.get("query"), False, detail, syntax])
            elif holds and not holds[-1][1]:
                holds[-1][1] = True
            else:  # a release of nothing the ledger added: no row can match it
                holds.append([detail.get("query"), True, {}, syntax])
    rows: dict[str, list[_HoldRow]] = {}
    try:
        query = (
            "SELECT name, query, released_at IS NOT NULL, reason, created_by, syntax FROM holds "
            "ORDER BY id"
        )
        try:
            found = db.execute(query).fetchall()
        except sqlite3.OperationalError:  # a catalog from before migration 7: all version 1
            found = db.execute(query.replace(", syntax", ", 1")).fetchall()
        for name, text, released, reason, by, syntax in found:
            rows.setdefault(name, []).append((text, bool(released), reason, by, syntax))
    except sqlite3.OperationalError:  # a catalog from before holds existed
        return
    for name in sorted(recorded.keys() | rows.keys()):
        for held, row in _paired(recorded.get(name, []), rows.get(name, [])):
            yield from _hold_pair(name, held, row)


def _paired(
    held: list[_LedgerHold], rows: list[_HoldRow]
) -> list[tuple[_LedgerHold | None, _HoldRow | None]]:
    """The ledger's holds of one name with the catalog's rows: first those that agree on
    query and state, in order (so a released row deleted by hand is the one named missing,
    not the active hold added again under the name), then what is left, by position (an
    edited row is then named as disagreeing)."""
    pairs: list[tuple[_LedgerHold | None, _HoldRow | None]] = []
    left_held: list[_LedgerHold] = []
    taken: set[int] = set()
    start = 0
    for hold in held:
        match = next(
            (j for j in range(start, len(rows)) if rows[j][:2] == (hold[0], hold[1])), None
        )
        if match is None:
            left_held.append(hold)
            continue
        pairs.append((hold, rows[match]))
        taken.add(match)
        start = match + 1
    left_rows = [row for j, row in enumerate(rows) if j not in taken]
    pairs.extend(itertools.zip_longest(left_held, left_rows))
    return pairs


def _hold_pair(name: str, held: _LedgerHold | None, row: _HoldRow | None) -> Iterator[Finding]:
    subject = f"hold {name}"
    if row is None:
        assert held is not None
        yield Finding(
            "catalog-row-missing",
            "error",
            subject,
            f"the ledger records hold {name!r} (query {held[0]!r}) but the catalog has no row "
            "for it (deleted by hand?)" + ("" if held[1] else ": retention no longer sees it"),
        )
        return
    if held is None:
        yield Finding(
            "ledger-missing",
            "error",
            subject,
            f"hold {name!r} is in the catalog but the ledger records no hold-add for it "
            "(added by hand?)",
        )
        return
    if row[0] != held[0]:
        yield Finding(
            "ledger-disagrees",
            "error",
            subject,
            f"hold {name!r} has the query {row[0]!r} in the catalog but {held[0]!r} in the "
            "ledger (edited by hand?): retention protects what the catalog's query matches",
        )
    elif row[4] != held[3]:
        yield Finding(
            "ledger-disagrees",
            "error",
            subject,
            f"hold {name!r} is read in query language version {row[4]!r} in the catalog but "
            f"{held[3]!r} in the ledger (edited by hand?): retention protects what the query "
            "means in the catalog's version",
        )
    if row[1] and not held[1]:
        yield Finding(
            "ledger-missing",
            "error",
            subject,
            f"hold {name!r} is released in the catalog but the ledger records no release "
            "(edited by hand?): retention no longer protects its messages",
        )
    elif held[1] and not row[1]:
        yield Finding(
            "ledger-disagrees",
            "error",
            subject,
            f"the ledger records the release of hold {name!r} but the catalog has it active",
        )
    added = held[2]  # the hold-add's detail; entries from before a field was kept lack it
    for field, value, label in (("reason", row[2], "reason"), ("by", row[3], "created_by")):
        if field in added and added[field] != value:
            yield Finding(
                "ledger-disagrees",
                "error",
                subject,
                f"hold {name!r} has the {label} {value!r} in the catalog but "
                f"{added[field]!r} in the ledger (edited by hand?)",
            )


def _detail(entry: dict[str, Any]) -> dict[str, Any]:
    return ledger.parse_detail(entry.get("detail"))


APPEND_ONLY_TRIGGERS = (
    "ledger_no_update",
    "ledger_no_delete",
    "audit_no_update",
    "audit_no_delete",
)


def guard_findings(db: sqlite3.Connection) -> Iterator[Finding]:
    """The triggers that make the ledger and the audit trail append-only are still there:
    someone who dropped one could edit or cut the chains."""
    present = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='trigger'")}
    for name in APPEND_ONLY_TRIGGERS:
        if name not in present:
            yield Finding(
                "catalog-guard-missing",
                "error",
                name,
                f"trigger {name} is gone from the catalog: the {name.split('_')[0]} was made "
                "editable by hand; check it against a notarised head (verify --ledger-head / "
                "--audit-head)",
            )


def _audit(db: sqlite3.Connection) -> Iterator[Finding]:
    entries = ledger.iter_entries(db, "audit")
    for problem in ledger.chain_problems(entries, ledger.AUDIT_FIELDS):
        yield Finding(
            "audit-broken", "error", "audit " + problem.split(":")[0], f"audit trail {problem}"
        )


# (seq, entry hash) of a chain's entry, notarised outside the vault; seq None when only the
# hash was kept (a bare HASH)
Anchor = tuple[int | None, str]


def parse_anchor(text: str) -> Anchor:
    """``SEQ HASH`` (as `ledger head` and `audit --head` print it), ``SEQ:HASH`` or a bare
    ``HASH``: the forms `ledger check --head` takes too (one parser, ``ledger.parse_head``)."""
    try:
        return ledger.parse_head(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _anchored(db: sqlite3.Connection, table: str, anchor: Anchor) -> Iterator[Finding]:
    """The chain still holds the notarised entry: nothing before it was removed or rewritten
    (the chain links every later entry to it), and it was not cut back before it."""
    seq, digest = anchor
    name = "ledger" if table == "ledger" else "audit trail"
    if seq in (0, None) and digest == ledger.GENESIS:  # notarised empty: every chain extends it
        return
    if seq is None:  # a bare hash: whichever entry has it (a valid chain fixes its place)
        row = db.execute(f"SELECT seq FROM {table} WHERE entry_hash=?", (digest,)).fetchone()
        if row is None:
            yield Finding(
                f"{table}-truncated",
                "error",
                f"{table} head",
                f"no entry of the {name} hashes to the notarised {digest}: entries were "
                "removed or rewritten",
            )
        return
    row = db.execute(f"SELECT entry_hash FROM {table} WHERE seq=?", (seq,)).fetchone()
    if row is None:
        yield Finding(
            f"{table}-truncated",
            "error",
            f"{table} {seq}",
            f"the {name} has no entry {seq} any more, but it was notarised with that entry: "
            "entries were removed",
        )
    elif row[0] != digest:
        yield Finding(
            f"{table}-truncated",
            "error",
            f"{table} {seq}",
            f"entry {seq} of the {name} hashes to {row[0]}, not the notarised {digest}: the "
            "chain was rewritten",
        )


def verify(
    vault: Vault,
    *,
    quick: bool = False,
    index_check: IndexCheck | None = None,
    anchors: dict[str, Anchor] | None = None,
) -> Iterator[Finding]:
    """Every finding about the vault; nothing is changed.  ``anchors``: notarised heads of the
    "ledger" and "audit" chains that must still be in them."""
    yield from _config(vault)
    yield from _permissions(vault)
    uri = read_only_uri(vault.catalog_path)
    try:
        # Every check reads one snapshot of the catalog: a fetch or import committing meanwhile
        # (messages and their ledger entries in one transaction) must not look like a catalog
        # row without its ledger entry.
        db = sqlite3.connect(uri, uri=True, isolation_level=None)
        later = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as exc:
        if (cannot := _cannot_read_here(vault, exc)) is not None:
            yield cannot
            return
        yield Finding(
            "catalog-missing",
            "error",
            "catalog.sqlite",
            f"the catalog {vault.catalog_path} cannot be opened ({exc}); restore catalog.sqlite "
            "from a backup (the blobs in objects/ are intact copies of every message)",
        )
        return
    with contextlib.closing(db), contextlib.closing(later):
        yield from _checks(vault, db, later, quick, index_check, anchors)


def _checks(
    vault: Vault,
    db: sqlite3.Connection,
    later: sqlite3.Connection,
    quick: bool,
    index_check: IndexCheck | None,
    anchors: dict[str, Anchor] | None,
) -> Iterator[Finding]:
    """The checks of the catalog snapshot ``db`` (``later``: the catalog as it is now)."""
    unindexable: set[str] = set()  # messages whose blob is missing or damaged
    try:
        db.execute("BEGIN")
        yield from _catalog(db)

        def committed_since(digest: str) -> bool:
            query = "SELECT 1 FROM messages WHERE sha256 = ?"
            return later.execute(query, (digest,)).fetchone() is not None

        def purged_since(digest: str) -> bool:
            query = "SELECT 1 FROM messages WHERE sha256 = ? AND purged_at IS NOT NULL"
            return later.execute(query, (digest,)).fetchone() is not None

        for finding in _blobs(
            vault,
            _message_rows(db),
            quick,
            committed_since,
            purged_since,
            _dates(db, vault.read_store()),
        ):
            if finding.code in UNINDEXABLE:
                unindexable.add(finding.subject)
            yield finding
        yield from _ledger(db)
        yield from _audit(db)
        yield from guard_findings(db)
        for table, anchor in (anchors or {}).items():
            yield from _anchored(db, table, anchor)
        if index_check is not None:
            # the snapshot's live messages, walked in order beside the index's ids
            for finding in index_check(vault, _live_ids(db), quick):
                if finding.code == "index-pending" and unindexable:
                    # `mailvault index` cannot index a message whose blob it cannot read
                    finding = dataclasses.replace(
                        finding,
                        detail=f"{finding.detail}, but not the {len(unindexable)} whose blob "
                        "is missing or damaged (above): restore those first",
                    )
                yield finding
    except sqlite3.DatabaseError as exc:  # a damaged file: what was found so far still stands
        if (cannot := _cannot_read_here(vault, exc)) is not None:
            yield cannot
            return
        yield Finding(
            "catalog-corrupt",
            "error",
            "catalog.sqlite",
            f"the catalog cannot be read ({exc}); restore catalog.sqlite from a backup (the "
            "blobs in objects/ are intact copies of every message)",
        )


# Blob findings of a message the indexer cannot read either: `mailvault index` cannot catch up
# on it until the blob is restored
UNINDEXABLE = frozenset({"blob-missing", "blob-corrupt", "blob-unreadable"})


def _permissions(vault: Vault) -> Iterator[Finding]:
    """Every directory of the vault, and every index file, writable only by its owner: what
    others could have changed cannot be trusted (opening a vault checks only the top).  The
    blobs are checked as ``_blobs`` walks them."""
    objects = os.path.join(vault.root, "objects")
    yield from _permission(objects)
    with contextlib.suppress(OSError), os.scandir(objects) as fanouts:  # not the blobs again
        for fanout in fanouts:
            if fanout.is_dir(follow_symlinks=False):
                yield from _permission(fanout.path)
    for top in ("index", "tmp"):
        for dirpath, _dirs, files in os.walk(os.path.join(vault.root, top)):
            yield from _permission(dirpath)
            if top == "index":
                for name in files:
                    yield from _permission(os.path.join(dirpath, name))


def _permission(path: str) -> Iterator[Finding]:
    try:
        info = os.lstat(path)
    except OSError:
        return
    if info.st_uid != os.geteuid() or info.st_mode & 0o022:
        yield Finding(
            "vault-permissions",
            "error",
            path,
            f"{path} is writable by others or not owned by you (mode "
            f"{info.st_mode & 0o777:o}, uid {info.st_uid}): its contents cannot be trusted; "
            "fix the mode (chmod go-w) and check what changed",
        )


def _config(vault: Vault) -> Iterator[Finding]:
    """The vault itself does not need mailvault.toml, but tonight's fetch does: say so now."""
    try:
        vault.config  # noqa: B018 - loading it is the check
    except MailvaultError as exc:
        yield Finding("config-invalid", "warning", "mailvault.toml", f"{exc} (fetch will fail)")


def _live_ids(db: sqlite3.Connection) -> Iterator[str]:
    """The live (not purged) messages of the catalog, in byte order, one row at a time."""
    return (sha256 for sha256, purged in _message_rows(db) if not purged)


def _message_rows(db: sqlite3.Connection) -> Iterator[tuple[str, bool]]:
    """(sha256, purged) of every message row of the catalog, in byte order, one at a time."""
    try:
        rows = db.execute("SELECT sha256, purged_at IS NOT NULL FROM messages ORDER BY sha256")
    except sqlite3.OperationalError:  # no purged_at yet: none is purged
        rows = db.execute("SELECT sha256, 0 FROM messages ORDER BY sha256")
    for sha256, purged in rows:
        yield sha256, bool(purged)


def summary(findings: list[Finding], repaired: list[Finding] | None = None) -> dict[str, object]:
    """The --json report.  ``repaired``: what `--repair-index` found and rebuilt the index for;
    listed apart from ``findings`` (what remains), and the run is not ``ok`` for it."""
    counts = Counter(f.severity for f in findings)
    report: dict[str, object] = {
        "schema": "mailvault/verify/v1",
        "ok": all(f.severity == "info" for f in findings) and not repaired,
        "counts": {k: counts.get(k, 0) for k in ("error", "warning", "info")},
        "findings": [f.as_json() for f in findings],
    }
    if repaired:
        report["repaired"] = [f.as_json() for f in repaired]
    return report


def dumps(findings: list[Finding]) -> str:
    return json.dumps(summary(findings), indent=2)


def _cannot_read_here(vault: Vault, exc: sqlite3.Error) -> Finding | None:
    """A catalog SQLite cannot read because it cannot create its -wal/-shm files (a full
    disk; a read-only copy with a write-ahead log left beside it): reported as what it is,
    for the fix of damage (restoring a backup) would lose what was committed."""
    from mailvault._fs import unwritable

    if (why := unwritable(vault.root)) is not None:
        return Finding(
            "vault-read-only",
            "error",
            "catalog.sqlite",
            f"the catalog cannot be read in place ({exc}): {why}, and SQLite reads the "
            "write-ahead log left beside it (catalog.sqlite-wal) only through a -shm file it "
            "would have to create; copy the vault to a writable place and verify the copy "
            "(nothing found so far says the catalog is damaged)",
        )
    if nearly_full(vault.root):
        return Finding(
            "disk-full",
            "error",
            "catalog.sqlite",
            f"the catalog cannot be read while the filesystem holding {vault.root} is full "
            f"({exc}): SQLite must create its -wal/-shm files to read it; free space there and "
            "run `mailvault verify` again (nothing found so far says the catalog is damaged)",
        )
    return None
