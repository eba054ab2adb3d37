"""Retention, legal holds and the audit trail: what a compliance archive must be able to prove.

* A **hold** protects every message matching its search query *at the time a purge runs* (so
  mail archived after the hold was placed is protected too), read in the version of the query
  language it was placed under (``syntax``), so that a change of the language never changes
  what it protects.  Adding and releasing holds are ledger entries.
* **Retention** purges messages older than ``keep_days`` that no active hold protects.  Age is
  counted from the message's Date header when the parser could read one, else from when the
  vault first stored it; with ``age_from = "archived"`` always from when the vault first stored
  it (a Date header is whatever the sender wrote: an old one would let mail expire at once).  A purge removes the blob, the parse rows and the index document, and
  keeps a tombstone: the ``messages`` row with ``purged_at`` set (so its UIDL is never fetched
  again) and a ``purge`` ledger entry (sha256, reason, time).  The catalog commit comes first:
  a crash before the files are removed leaves a purged message whose blob the next
  ``retention apply`` removes.  The plan is a temporary SQLite table (``Plan``), so memory
  does not grow with the number of messages past retention.
* The **audit trail** records every search, show, export and retention run (time, OS user,
  command, query, number of results) in a hash-chained table beside the ledger.  It has no off
  switch.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from mailvault import ledger
from mailvault.audit import claimed_names, os_user
from mailvault.errors import MailvaultError, StoreError, UsageError
from mailvault.vault import Vault, read_only_uri, utcnow

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from mailvault.catalog import Catalog
    from mailvault.store import BlobStore

# -- audit (written by mailvault.audit.record) ---------------------------------------------------


def audit_entries(vault: Vault, since: datetime | None = None) -> list[dict[str, Any]]:
    with sqlite3.connect(read_only_uri(vault.catalog_path), uri=True) as db:
        entries = list(ledger.iter_entries(db, "audit"))
    if since is not None:
        entries = [e for e in entries if datetime.fromisoformat(e["at"]) >= since]
    return entries


# -- holds -------------------------------------------------------------------------------------


def matching_ids(vault: Vault, query: str, syntax: int | None = None) -> Iterator[list[str]]:
    """The messages ``query`` matches, read in query language version ``syntax`` (None: the
    current one, as a new hold is placed), in batches: a hold on most of a large vault is
    walked without its hits (or their stored documents) ever being in memory at once."""
    from mailvault.search import Searcher
    from mailvault.search.query import SYNTAX

    searcher = Searcher(vault.index_path, query, syntax=SYNTAX if syntax is None else syntax)
    return searcher.ids()


def add_hold(vault: Vault, name: str, query: str, reason: str | None) -> int:
    """Place a hold; returns how many messages it matches now (the query is checked here)."""
    if not name.strip():
        raise UsageError("a hold needs a name (the matter it is for); `hold release` takes it")
    if not name.isprintable():
        raise UsageError(
            f"hold name {name!r} has a line break or control character; use plain text"
        )
    from mailvault.search.query import SYNTAX

    matches = sum(len(batch) for batch in matching_ids(vault, query, SYNTAX))
    catalog = vault.catalog()
    try:
        with catalog.transaction() as conn:
            if conn.execute(
                "SELECT 1 FROM holds WHERE name=? AND released_at IS NULL", (name,)
            ).fetchone():
                raise UsageError(
                    f"a hold named {name!r} is already active; release it first or pick another name"
                )
            actor = _actor()
            conn.execute(
                "INSERT INTO holds(name, query, syntax, reason, created_at, created_by) "
                "VALUES (?,?,?,?,?,?)",
                (name, query, SYNTAX, reason, utcnow(), actor["by"]),
            )
            ledger.append(
                conn,
                "hold-add",
                detail={
                    "name": name,
                    "query": query,
                    "syntax": SYNTAX,
                    "reason": reason,
                    "matches": matches,
                    **actor,
                },
            )
    finally:
        catalog.close()
    return matches


def _actor() -> dict[str, Any]:
    """``by`` (the real uid's account) and ``claimed_by`` (the login names the environment
    gives that are not it), for the detail of a ledger entry of a change someone ran
    (hold-add, hold-release, purge): who did it, never $LOGNAME's word."""
    user = os_user()
    claims = claimed_names(user)
    return {"by": user, **({"claimed_by": claims} if claims else {})}


def release_hold(vault: Vault, name: str) -> None:
    catalog = vault.catalog()
    try:
        with catalog.transaction() as conn:
            row = conn.execute(
                "SELECT id, query, syntax FROM holds WHERE name=? AND released_at IS NULL",
                (name,),
            ).fetchone()
            if row is None:
                raise UsageError(f"no active hold named {name!r}; `mailvault hold list` shows them")
            conn.execute("UPDATE holds SET released_at=? WHERE id=?", (utcnow(), row[0]))
            ledger.append(
                conn,
                "hold-release",
                detail={"name": name, "query": row[1], "syntax": row[2], **_actor()},
            )
    finally:
        catalog.close()


def list_holds(vault: Vault, *, include_released: bool = False) -> list[dict[str, Any]]:
    catalog = vault.catalog()
    try:
        where = "" if include_released else "WHERE released_at IS NULL"
        return catalog.rows(
            "SELECT name, query, syntax, reason, created_at, created_by, released_at "
            f"FROM holds {where} ORDER BY id"
        )
    finally:
        catalog.close()


# -- retention ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    sha256: str
    age_basis: str  # the date the age was counted from
    keep_days: int
    held_by: tuple[str, ...]
    kept: str | None = None  # why no hold matches it and it is not purged all the same (_vet)
    lf_sha256: str | None = None  # of its lf form, read by _vet for the purge entry (_lf_form)

    def as_json(self) -> dict[str, Any]:
        return {
            "sha256": self.sha256,
            "date": self.age_basis,
            "keep_days": self.keep_days,
            "held_by": list(self.held_by),
            "kept": self.kept,
        }


# Rows of a plan read or written at a time (and catalog rows looked up for their accounts)
_PAGE = 1000


class Plan:
    """The messages past retention, in the catalog's order, with what retention decided for
    each (``Candidate``): in a temporary SQLite table, not in memory.  The first run on a
    ten-year archive expires a million messages at once, and takes the memory of a run that
    expires ten.  Read like a list (``len``, iteration, as often as needed) until ``close``.
    """

    def __init__(self) -> None:
        # "": a private database that SQLite deletes when it is closed (a crash leaves no file
        # behind), its temp table on disk whatever temp store this SQLite was built with
        self._db = sqlite3.connect("")
        with self._failing():
            self._db.execute("PRAGMA temp_store = FILE")
            # The catalog's values are copied without a type: one edited by hand (a date
            # stored as a number) reaches _vet as the catalog holds it.  ``kept`` is UTF-8
            # with surrogates passed through: a reason may name a path, which may be any bytes.
            self._db.execute(
                """CREATE TEMP TABLE plan (
                     pos INTEGER PRIMARY KEY,  -- the catalog's order, in which it is listed
                     sha256, basis, keep_days, date, date_fallback, first_ingest_at,
                     held_by,  -- a JSON list of the names of the holds protecting it; NULL: none
                     kept BLOB,
                     lf_sha256)"""
            )

    def __enter__(self) -> Plan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    def __len__(self) -> int:
        with self._failing():
            return int(self._db.execute("SELECT count(*) FROM plan").fetchone()[0])

    def __iter__(self) -> Iterator[Candidate]:
        for page in self._pages("sha256, basis, keep_days, held_by, kept, lf_sha256"):
            for _, sha256, basis, keep_days, held_by, kept, lf_sha256 in page:
                yield Candidate(
                    sha256,
                    basis,
                    keep_days,
                    tuple(json.loads(held_by)) if held_by is not None else (),
                    kept.decode("utf-8", "surrogatepass") if kept is not None else None,
                    lf_sha256,
                )

    def counts(self) -> dict[str, int]:
        """``expired`` (every candidate), ``held``, and ``kept`` (no hold protects it, and
        ``_vet`` keeps it all the same)."""
        with self._failing():
            expired, held, kept = self._db.execute(
                "SELECT count(*), count(held_by), count(kept) FILTER (WHERE held_by IS NULL) "
                "FROM plan"
            ).fetchone()
        return {"expired": expired, "held": held, "kept": kept}

    def add(self, rows: list[tuple[Any, ...]]) -> None:
        """Candidates: (sha256, basis, keep_days, and the catalog's date, date_fallback and
        first_ingest_at for _vet), in the catalog's order."""
        with self._failing(), self._db:
            self._db.executemany(
                "INSERT INTO plan(sha256, basis, keep_days, date, date_fallback, "
                "first_ingest_at) VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )

    def hold(self, name: str, matches: Iterable[str]) -> None:
        """Hold ``name`` protects those of the candidates among ``matches`` (a batch of its
        query's hits)."""
        with self._failing():
            # built once the plan is filled: faster than kept up row by row
            self._db.execute("CREATE INDEX IF NOT EXISTS temp.plan_sha256 ON plan(sha256)")
        with self._failing(), self._db:
            self._db.executemany(
                "UPDATE plan SET held_by = json_insert(coalesce(held_by, '[]'), '$[#]', ?) "
                "WHERE sha256 = ?",
                ((name, sha256) for sha256 in set(matches)),
            )

    def free(self) -> Iterator[list[tuple[Any, ...]]]:
        """The candidates no hold protects, a page at a time, for _vet: (pos, sha256, basis,
        keep_days, date, date_fallback, first_ingest_at)."""
        return self._pages(
            "sha256, basis, keep_days, date, date_fallback, first_ingest_at", "held_by IS NULL"
        )

    def vetted(self, results: list[tuple[int, str | None, str | None]]) -> None:
        """What _vet found, by pos: why the candidate is kept (None: it is not), and the
        sha256 of its lf form."""
        with self._failing(), self._db:
            self._db.executemany(
                "UPDATE plan SET kept = ?, lf_sha256 = ? WHERE pos = ?",
                (
                    (None if kept is None else kept.encode("utf-8", "surrogatepass"), lf, pos)
                    for pos, kept, lf in results
                ),
            )

    def _pages(self, columns: str, where: str = "1") -> Iterator[list[tuple[Any, ...]]]:
        """pos and ``columns`` of the rows ``where`` selects, in pos order, ``_PAGE`` at a
        time: each page is read whole, so the table may be written between two."""
        after = 0
        sql = f"SELECT pos, {columns} FROM plan WHERE pos > ? AND ({where}) ORDER BY pos LIMIT ?"
        while True:
            with self._failing():
                page = self._db.execute(sql, (after, _PAGE)).fetchall()
            if not page:
                return
            yield page
            after = page[-1][0]

    @staticmethod
    @contextlib.contextmanager
    def _failing() -> Iterator[None]:
        """A failure of the plan's table (its directory full, say) as one line that names
        that directory, not the catalog or the vault's filesystem."""
        try:
            yield
        except sqlite3.Error as exc:
            raise StoreError(
                f"retention's plan, a temporary SQLite file in {_sqlite_temp_dir()}, failed "
                f"({exc}); it takes about 300 bytes per message past retention there: free "
                "space there or point SQLITE_TMPDIR at a directory with room, and run "
                "`mailvault retention apply` again"
            ) from None


def _sqlite_temp_dir() -> str:
    """The directory SQLite (its unix VFS) puts temporary files in: the first of
    $SQLITE_TMPDIR, $TMPDIR, /var/tmp, /usr/tmp, /tmp and . that is a directory it may write."""
    import os

    for path in (
        os.environ.get("SQLITE_TMPDIR"),
        os.environ.get("TMPDIR"),
        "/var/tmp",
        "/usr/tmp",
        "/tmp",
    ):
        if path and os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK):
            return path
    return "."


def plan(vault: Vault, now: datetime | None = None) -> Plan:
    """Messages past retention (a ``Plan``: the caller closes it); those an active hold
    protects carry the holds' names, and those ``_vet`` keeps all the same the reason."""
    now = now or datetime.now(UTC)
    config = vault.config
    archived = config.retention_age_from == "archived"
    default, per_account = config.retention_keep_days, config.keep_days_by_label()
    if default is None and not per_account:
        raise UsageError(
            f"{config.path}: no retention policy; set [retention] keep_days = N (or keep_days "
            "per account, or per import label in [imports.NAME])"
        )
    _check_holds(vault)
    result = Plan()
    try:
        catalog = vault.catalog()
        try:
            holds = catalog.rows("SELECT name, query, syntax FROM holds WHERE released_at IS NULL")
            for page in _expired_rows(catalog, now, default, per_account, archived):
                result.add(page)
        finally:
            catalog.close()
        if holds and len(result):
            for hold in holds:
                for batch in matching_ids(vault, hold["query"], hold["syntax"]):
                    result.hold(hold["name"], batch)
        _vet(vault, result, now, archived=archived)
    except BaseException:
        result.close()
        raise
    return result


def _expired_rows(
    catalog: Catalog,
    now: datetime,
    default: int | None,
    per_account: dict[str, int],
    archived: bool,
) -> Iterator[list[tuple[Any, ...]]]:
    """The rows of ``Plan.add`` for the messages past retention (``default`` days, or those
    of the message's accounts and labels, ``per_account``; counted from its date, or from its
    archiving if ``archived``), in the catalog's order, a page at a time.

    The catalog's rows are read one at a time, and only those older than the shortest policy
    (the only ones that can be past any) are kept, and looked up for their accounts a page
    at a time: never a row for every message of the vault."""
    from mailvault.indexer import message_accounts

    shortest = min(d for d in (default, *per_account.values()) if d is not None)
    rows = catalog.db.query(
        """SELECT m.sha256, m.first_ingest_at, mm.date, mm.date_fallback
           FROM messages m LEFT JOIN message_meta mm ON mm.sha256 = m.sha256
           WHERE m.purged_at IS NULL"""
    )
    old = ((row, basis) for row in rows if _expired(basis := _basis(row, archived), shortest, now))
    while page := list(itertools.islice(old, _PAGE)):
        # rows, not group_concat: a label is user-given text (`import --account 'matter 7,
        # acme'`), so no separator can join them safely
        accounts = message_accounts(catalog, [row["sha256"] for row, _ in page])
        expired = []
        for row, basis in page:
            keep_days = _keep_days(accounts.get(row["sha256"], ()), default, per_account)
            if keep_days is not None and _expired(basis, keep_days, now):
                meta = (row["date"], row["date_fallback"], row["first_ingest_at"])
                expired.append((row["sha256"], basis, keep_days, *meta))
        yield expired


def _keep_days(accounts: Iterable[str], default: int | None, per: dict[str, int]) -> int | None:
    """A message's retention period: for a message kept for several accounts, as long as
    the longest of them says; None, kept for ever (an account with no policy, and none set
    for the vault)."""
    options = [per.get(a, default) for a in accounts] or [default]
    if any(d is None for d in options):
        return None
    return max(d for d in options if d is not None)


def _vet(vault: Vault, plan: Plan, now: datetime, *, archived: bool = False) -> None:
    """Why each candidate no hold matches must be kept all the same: retention purges only
    what it can prove is under no hold and past retention.  Holds are matched through the
    index, which lacks a message whose blob is missing, unreadable or corrupt (and the purge
    of such a message would hide the loss); and the age comes from catalog rows that can be
    edited by hand.  So each candidate's blob is read and hashed, its index document looked
    up, and its date read again from the blob and its first ingest from the ledger.  The cost
    is the candidates' alone: one blob read and a few lookups each.  That read also hashes
    the message's lf form, for its purge entry.  Both are written to ``plan``, a page at a
    time."""
    from mailvault import index as ix

    pages = plan.free()
    first = next(pages, None)
    if first is None:  # every candidate is held (or none): neither store nor index is opened
        return
    store = vault.read_store()
    index = ix.open_for_search(vault.index_path)
    searcher, schema = index.searcher(), index.schema
    uri = read_only_uri(vault.catalog_path)
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:

        def vet(row: tuple[Any, ...]) -> tuple[int, str | None, str | None]:
            pos, sha256, basis, keep_days, date, date_fallback, first_ingest_at = row
            head, lf_form, reason = _read_blob(store, sha256)
            if head is not None and not ix.contains(searcher, schema, sha256):
                reason = (
                    "it is not in the search index, so no hold can be checked against it; run "
                    "`mailvault index` (and `mailvault verify` if it stays out)"
                )
            elif head is not None:
                c = Candidate(sha256, basis, keep_days, ())
                meta = {
                    "date": date,
                    "date_fallback": date_fallback,
                    "first_ingest_at": first_ingest_at,
                }
                reason = _age_problem(store, db, c, meta, head, now, archived)
            return pos, reason, lf_form

        for page in itertools.chain([first], pages):
            plan.vetted([vet(row) for row in page])


def _read_blob(store: BlobStore, sha256: str) -> tuple[bytes | None, str | None, str | None]:
    """The head of the message (``blobdate.read_head``) and the sha256 of its lf form, the
    whole blob hashed on the same read; or why the blob cannot vouch for the message:
    missing, unreadable, corrupt."""
    import hashlib

    from mailvault.blobdate import read_head
    from mailvault.export.transform import LineEndingsToLf

    if store.find(sha256) is None:
        return (
            None,
            None,
            "its blob is missing (a purge would record the loss as a retention purge); restore "
            "the blob from a backup and run `mailvault verify`",
        )
    lf_hash, to_lf = hashlib.sha256(), LineEndingsToLf()

    def read() -> Iterator[bytes]:
        for chunk in store.iter_verified(sha256):
            lf_hash.update(to_lf.feed(chunk))
            yield chunk
        lf_hash.update(to_lf.flush())

    try:
        head = read_head(read())
    except MailvaultError as exc:  # unreadable, or a content that no longer hashes to its name
        return None, None, str(exc)
    return head, lf_hash.hexdigest(), None


def _age_problem(
    store: BlobStore,
    db: sqlite3.Connection,
    c: Candidate,
    row: dict[str, Any],
    head: bytes,
    now: datetime,
    archived: bool = False,
) -> str | None:
    """Whether the blob's Date header (or, with none or ``archived``, the ledger's first
    ingest) says what the catalog's rows say, and that the message is past retention by it."""
    from mailvault.blobdate import blob_date, catalog_date, ingests_agree, moment

    verify = "run `mailvault verify`"
    first = db.execute(
        "SELECT min(at) FROM ledger WHERE kind = 'ingest' AND sha256 = ?", (c.sha256,)
    ).fetchone()[0]
    if first is None:
        return f"the ledger records no ingest of it (the catalog was edited?); {verify}"
    try:
        header = catalog_date(row["date"], row["date_fallback"])
    except ValueError as exc:
        return f"the catalog's date {exc} (message_meta edited by hand?); {verify}"
    derived = blob_date(store, c.sha256, head, header)
    if derived != header:
        says = (
            f"its Date header says {derived.isoformat()}"
            if derived
            else "it has no readable Date header"
        )
        return (
            f"the catalog dates it {c.age_basis} but {says} (message_meta edited by hand?); "
            f"{verify}, `mailvault reindex` reads the date again"
        )
    ingest = moment(first)
    if ingest is None:
        return f"the ledger's first ingest of it, {first!r}, is no date (edited?); {verify}"
    by_ingest = derived is None or archived
    if by_ingest and not ingests_agree(row["first_ingest_at"], first):
        return (
            f"the catalog says it was first stored at {row['first_ingest_at']} but the ledger "
            f"at {first} (edited by hand?); {verify}"
        )
    if not _expired((ingest if by_ingest else derived or ingest).isoformat(), c.keep_days, now):
        return f"by the ledger's first ingest ({first}) it is not past retention yet"
    return None


def _check_holds(vault: Vault) -> None:
    """Refuse to plan a purge while the holds table disagrees with the ledger's hold-add and
    hold-release entries (verify's pairing, ``verify.hold_findings``), or those entries or
    the triggers that keep the ledger append-only were tampered with: a hold deleted,
    released or narrowed by editing catalog.sqlite must not let retention purge what it
    protected.  Reads only the hold entries of the ledger."""

    from mailvault import verify
    from mailvault.errors import CatalogError

    uri = read_only_uri(vault.catalog_path)
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
        entries = verify.hold_entries(db)
        problems = [f.detail for f in verify.hold_findings(db, entries)]
        problems += [
            f"ledger entry {e['seq']} ({e['kind']}) does not hash to its recorded hash (edited)"
            for e in entries
            if ledger.entry_hash(e) != e["entry_hash"]
        ]
        problems += _unlinked(db, entries)
        problems += [f.detail for f in verify.guard_findings(db)]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CatalogError(
            f"retention refused, nothing was purged: {problems[0]}{more}; run `mailvault "
            "verify` and put back what it names (from a backup of catalog.sqlite) before "
            "retention runs again"
        )


def _unlinked(db: sqlite3.Connection, entries: list[dict[str, Any]]) -> list[str]:
    """Hold entries the chain does not hold in place: one rewritten with its own hash
    recomputed (the ledger's triggers dropped and put back) still hashes right, but the next
    entry's ``prev_hash`` names the old one (and its own ``prev_hash`` the entry before).  Two
    lookups per hold entry, not a walk of the whole ledger."""
    problems = []
    for entry in entries:
        seq = entry["seq"]
        before = db.execute("SELECT entry_hash FROM ledger WHERE seq = ?", (seq - 1,)).fetchone()
        after = db.execute("SELECT prev_hash FROM ledger WHERE seq = ?", (seq + 1,)).fetchone()
        expected_prev = before[0] if before is not None else ledger.GENESIS
        if entry["prev_hash"] != expected_prev:
            problems.append(
                f"ledger entry {seq} ({entry['kind']}) is not chained to the one before"
            )
        elif after is not None and after[0] != entry["entry_hash"]:
            problems.append(
                f"ledger entry {seq + 1} is not chained to entry {seq} ({entry['kind']})"
            )
    return problems


def _basis(row: dict[str, Any], archived: bool = False) -> str:
    """The date a message's age counts from: its Date header, else (or, ``archived``, always)
    its first ingest."""
    by_header = row["date"] and not row["date_fallback"] and not archived
    return str(row["date"] if by_header else row["first_ingest_at"])


def _expired(basis: str, keep_days: int, now: datetime) -> bool:
    """Past retention by ``basis``; also when that is no date (edited by hand): the message
    is then a candidate that ``_vet`` keeps, naming why, rather than a crash of the run."""
    from mailvault.blobdate import moment

    when = moment(basis)
    return when is None or when <= now - timedelta(days=keep_days)


def apply(
    vault: Vault, candidates: Iterable[Candidate], committed: Callable[[int], None] | None = None
) -> int:
    """Purge the candidates no hold protects and ``_vet`` does not keep (the caller holds the
    write lock), then remove their files; returns how many it purged.  ``committed`` is called
    with the number purged as soon as the purge is committed, before the files go (the audit
    trail's "finished": a run stopped while it removed thousands of files left only its
    "started", as if it had purged nothing).

    One transaction, whatever the number: SQLite's page cache spills to the WAL, so memory
    stays flat, and a purge in batches would write the catalog's indexes again for each
    batch (each batch's random sha256s touch most of their pages: ten times the time for
    100,000 purges, and growing with the vault)."""
    actor = _actor()
    catalog = vault.catalog()
    try:
        purged = 0
        with catalog.transaction() as conn:
            for c in candidates:
                if not c.held_by and not c.kept:
                    _purge(conn, c, actor)
                    purged += 1
        if committed is not None:
            committed(purged)
        _remove_files(vault, catalog)
    finally:
        catalog.close()
    return purged


def _purge(conn: sqlite3.Connection, c: Candidate, actor: dict[str, Any]) -> None:
    """The catalog's side of one purge: its parse rows go, its ``messages`` row stays as a
    tombstone, and the ledger records it."""
    size = conn.execute("SELECT size FROM messages WHERE sha256=?", (c.sha256,)).fetchone()[0]
    conn.execute("DELETE FROM message_meta WHERE sha256=?", (c.sha256,))
    conn.execute("UPDATE messages SET purged_at=? WHERE sha256=?", (utcnow(), c.sha256))
    ledger.append(
        conn,
        "purge",
        sha256=c.sha256,
        size=size,
        detail={
            "reason": f"retention: older than {c.keep_days} days",
            "date": c.age_basis,
            **actor,
            **_lf_form(c),
        },
    )


def _lf_form(candidate: Candidate) -> dict[str, str]:
    """``lf_sha256``, the sha256 of the message's lf form (as ``export --line-endings lf``
    writes it), for its purge entry: once the blob is gone, an import of a file named after
    the message can still tell its lf export (refused: it is the purged mail) from other mail.
    Nothing when the message has no CRLF (its lf form is itself)."""
    lf = candidate.lf_sha256
    return {"lf_sha256": lf} if lf is not None and lf != candidate.sha256 else {}


# Files of purges the ledger records (this run's, and any a crash left unfinished), in byte
# order; a purged_at without its ledger entry is an edited catalog: verify reports it, and its
# blob stays
_PURGES_RECORDED = """
    SELECT sha256 FROM messages m WHERE purged_at IS NOT NULL AND EXISTS
    (SELECT 1 FROM ledger l WHERE l.kind = 'purge' AND l.sha256 = m.sha256)
    ORDER BY sha256"""


def _remove_files(vault: Vault, catalog: Catalog) -> None:
    """Blobs and index documents of purged messages (idempotent: also finishes a crashed
    purge): every purge ever recorded, read one row at a time, the blobs first."""

    def purged() -> Iterator[str]:
        for (sha256,) in catalog.db.execute(_PURGES_RECORDED):
            yield sha256

    _remove_blobs(vault, purged())
    _remove_documents(vault, purged())


def _remove_blobs(vault: Vault, purged: Iterable[str]) -> None:
    store = vault.store()
    for sha in purged:
        path = store.find(sha)
        if path is not None:
            path.unlink()


def _remove_documents(vault: Vault, purged: Iterable[str]) -> None:
    """The index documents of ``purged`` (in byte order) that the index still holds (walked
    beside its ids): not a delete queued for every message the vault ever purged."""
    from mailvault import index as ix
    from mailvault.indexer import still_indexed

    purged = iter(purged)
    head = next(purged, None)  # none: the index is not opened
    if head is None or not (vault.index_path / "meta.json").exists():
        return
    indexed = still_indexed(vault, itertools.chain([head], purged))
    first = next(indexed, None)
    if first is None:
        return
    index, _ = ix.create_or_open(vault.index_path)
    writer = ix.IndexWriter(index)
    writer.delete_many(itertools.chain([first], indexed))
    writer.close()


def dumps(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2)
