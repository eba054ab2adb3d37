"""The SQLite catalog: accounts, the UIDL map, messages and ingest runs.

The catalog is half of the truth (the object store is the other half), so it runs in WAL mode
with ``synchronous=FULL``: a committed row survives a power cut, which is what makes "DELE only
after commit" mean something.  The schema lives in ``schemas/catalog.sql`` as numbered
migrations tracked with ``PRAGMA user_version``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailvault import ledger
from mailvault._fs import nearly_full, unwritable
from mailvault.errors import CatalogError
from mailvault.resources import schema_path

if TYPE_CHECKING:
    import sqlite_utils

MIGRATION_MARK = re.compile(r"^-- migration: (\d+)\s*$", re.MULTILINE)
_IN_CHUNK = 500  # host parameters per IN (...) list; SQLite's old default limit is 999


def utcnow() -> str:
    return datetime.now(UTC).isoformat()


def migrations() -> list[tuple[int, str]]:
    """The numbered sections of schemas/catalog.sql, in order."""
    text = schema_path("catalog.sql").read_text(encoding="utf-8")
    marks = list(MIGRATION_MARK.finditer(text))
    sections = []
    for i, mark in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        sections.append((int(mark.group(1)), text[mark.end() : end]))
    return sorted(sections)


@dataclass(frozen=True, slots=True)
class LiveUidl:
    """A UIDL we committed and have not yet seen disappear from the server."""

    id: int
    uidl: str
    sha256: str
    size: int
    first_seen: str
    dele_sent_at: str | None
    listed_size: int | None  # what LIST said when it was committed (None: not recorded)

    @property
    def committed_listing(self) -> int:
        """The size LIST gave when it was committed (the stored size for older rows)."""
        return self.size if self.listed_size is None else self.listed_size


@dataclass(frozen=True, slots=True)
class Committed:
    """One message to record in a group commit."""

    sha256: str
    size: int
    uidl: str | None
    first_seen: str
    listed_size: int | None = None  # fetch: LIST's size for it


def _same_mailbox(was: tuple[str, str], now: tuple[str, str]) -> bool:
    """Whether (host, user) pairs name one mailbox (host names are case-insensitive)."""
    return was[0].rstrip(".").lower() == now[0].rstrip(".").lower() and was[1] == now[1]


class NewerCatalog(CatalogError):
    """The catalog was migrated by a newer mailvault: an older one must not write it (it
    would read holds placed in a newer query language in its own, for one)."""


def newer_catalog_message(path: Path, found: int, known: int) -> str:
    return (
        f"the catalog {path} has schema version {found}, written by a newer mailvault (this one "
        f"knows up to {known}); run that newer mailvault (or upgrade this one): an older one "
        "could misread what the newer one recorded, such as the query language of a hold"
    )


class Catalog:
    """One connection to the catalog; use one per thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            conn = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
            self.conn = conn
            self.conn.execute("PRAGMA recursive_triggers=on")  # as sqlite-utils sets it
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except NewerCatalog:
            self.conn.close()
            raise
        except sqlite3.DatabaseError as exc:
            if (why := unwritable(path.parent)) is not None:
                raise CatalogError(
                    f"cannot open the catalog {path}: {why} ({exc}), and mailvault opens it "
                    "for writing here: run it on a writable vault, or on a copy (`cp -a`); "
                    "nothing is damaged"
                ) from None
            if nearly_full(path.parent):
                raise CatalogError(
                    f"cannot open the catalog {path}: the filesystem holding it is full ({exc}); "
                    "free space there and rerun: nothing is damaged, what was committed is kept"
                ) from None
            raise CatalogError(
                f"cannot open the catalog {path}: {exc}; run `mailvault verify` "
                "or restore catalog.sqlite from a backup"
            ) from None

    @functools.cached_property
    def db(self) -> sqlite_utils.Database:
        """The connection wrapped by sqlite-utils, for callers that want its helpers.

        Made on first use: importing sqlite-utils costs ~80 ms, a noticeable part of a
        `mailvault fetch` that has little to do, and the catalog's own statements are plain
        ``sqlite3``.  The connection is in autocommit mode, so both execute the same way.
        """
        import sqlite_utils

        return sqlite_utils.Database(self.conn)

    def close(self) -> None:
        self.conn.close()

    def _migrate(self) -> None:
        current = self.conn.execute("PRAGMA user_version").fetchone()[0]
        known = migrations()
        if current > known[-1][0]:
            raise NewerCatalog(newer_catalog_message(self.path, current, known[-1][0]))
        for number, sql in known:
            if number <= current:
                continue
            with self.conn:
                self.conn.execute("BEGIN IMMEDIATE")
                for statement in _split_sql(sql):
                    self.conn.execute(statement)
                self.conn.execute(f"PRAGMA user_version = {number}")

    @property
    def schema_version(self) -> int:
        return int(self.conn.execute("PRAGMA user_version").fetchone()[0])

    def transaction(self) -> sqlite3.Connection:
        """``with catalog.transaction():`` — one atomic, durable unit."""
        return _Transaction(self.conn)  # type: ignore[return-value]

    # -- accounts -------------------------------------------------------------------------------
    def mailbox_change(self, name: str, host: str, user: str) -> tuple[str, str] | None:
        """The (host, user) the account was last fetched from, if that is another mailbox than
        ``host`` and ``user`` name (None: the same one, or never fetched)."""
        row = self.conn.execute("SELECT host, user FROM accounts WHERE name=?", (name,)).fetchone()
        was = (str(row[0]), str(row[1])) if row is not None else None
        return was if was is not None and not _same_mailbox(was, (host, user)) else None

    def account_known(self, name: str) -> bool:
        """Whether account ``name`` was fetched before."""
        return (
            self.conn.execute("SELECT 1 FROM accounts WHERE name=?", (name,)).fetchone() is not None
        )

    def other_names_of(self, name: str, host: str, user: str) -> list[str]:
        """The accounts other than ``name`` that were fetched from this mailbox and still have
        live UIDLs there (a renamed account, or one mailbox configured twice)."""
        rows = self.conn.execute(
            "SELECT a.name, a.host, a.user FROM accounts AS a WHERE a.name != ? AND EXISTS "
            "(SELECT 1 FROM uidls u WHERE u.account = a.name AND u.deleted_confirmed_at IS NULL)",
            (name,),
        ).fetchall()
        return sorted(r[0] for r in rows if _same_mailbox((r[1], r[2]), (host, user)))

    def uidls_of(self, ids: list[int]) -> list[str]:
        """The UIDLs of ``uidls`` rows (rows of mail from a server without UIDL have none)."""
        found: list[str] = []
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            query = f"SELECT uidl FROM uidls WHERE id IN ({marks}) AND uidl IS NOT NULL"
            found += [row[0] for row in self.conn.execute(query, chunk)]
        return found

    def ensure_account(self, name: str, host: str, port: int, user: str, tls: str) -> None:
        """Record the account's server; if it now names another mailbox (host or user), the
        UIDLs committed from the old one stop being live (ledger ``mailbox-changed``): a UIDL
        only names a message within one mailbox, and trusting them here would skip, or
        delete unread, whatever this mailbox holds under the same UIDLs."""
        was = self.mailbox_change(name, host, user)
        with self.transaction():
            if was is not None:
                rows = self.conn.execute(
                    "SELECT id FROM uidls WHERE account=? AND deleted_confirmed_at IS NULL",
                    (name,),
                ).fetchall()
                detail = {"was": f"{was[1]}@{was[0]}", "now": f"{user}@{host}"}
                self._mark_deleted([r[0] for r in rows], "mailbox-changed", utcnow(), detail)
            self.conn.execute(
                "INSERT INTO accounts(name, host, port, user, tls, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
                "host=excluded.host, port=excluded.port, user=excluded.user, tls=excluded.tls",
                (name, host, port, user, tls, utcnow()),
            )

    # -- runs and provenance --------------------------------------------------------------------
    def start_run(self, account: str) -> int:
        """A new run of ``account``; one still 'running' was killed (the caller holds the vault
        lock, so no other process runs it), and is closed so (``_close_killed``)."""
        now = utcnow()
        with self.transaction():
            killed = self.conn.execute(
                "SELECT id, started_at FROM runs WHERE account=? AND status='running' ORDER BY id",
                (account,),
            ).fetchall()
            for run_id, started_at in killed:
                self._close_killed(account, run_id, started_at, now)
            cur = self.conn.execute(
                "INSERT INTO runs(account, started_at, status) VALUES (?, ?, 'running')",
                (account, now),
            )
        return int(cur.lastrowid or 0)

    def _close_killed(self, account: str, run_id: int, started_at: str, now: str) -> None:
        """Close a run that ended without recording its end (SIGKILL, a crash, a power cut, a
        full disk at its end) with what the catalog shows it did: it was closed with every
        count 0 and the next run's start as its end, while it had committed hundreds.

        fetched, duplicates, bytes and deleted come from its ledger entries; finished_at is
        the last time it wrote anything (it was killed after that, when is unknown).  listed,
        new and retries are only recorded at a run's end: they stay 0.
        """
        after = self.conn.execute(
            "SELECT min(started_at) FROM runs WHERE account=? AND id>?", (account, run_id)
        ).fetchone()[0]
        until = after or now
        fetched, duplicates, size, deleted, last = self._fetch_entries(account, started_at, until)
        alive = self.conn.execute(
            "SELECT max(started_at) FROM sessions WHERE run_id=? UNION ALL "
            "SELECT max(dele_sent_at) FROM uidls WHERE account=? AND dele_sent_at>=? "
            "AND dele_sent_at<?",
            (run_id, account, started_at, until),
        ).fetchall()
        finished = max(t for t in (started_at, last, *(row[0] for row in alive)) if t)
        self.conn.execute(
            "UPDATE runs SET status='killed', finished_at=?, fetched=?, duplicates=?, bytes=?, "
            "deleted=? WHERE id=?",
            (finished, fetched, duplicates, size, deleted, run_id),
        )

    def _fetch_entries(self, account: str, since: str, until: str) -> tuple[Any, ...]:
        """(ingests, duplicates among them, their bytes, deletions confirmed, the last entry's
        time) of fetches of ``account`` between two times.

        Ledger entries name the account, not the run; under the vault lock no other fetch of
        the account writes between one run's start and the next's.  Only fetch's own entries
        count (an `import --account` may have run in between).  A scan of the ledger, done
        once per killed run."""
        row: tuple[Any, ...] = self.conn.execute(
            """SELECT coalesce(sum(kind='ingest'), 0),
                      coalesce(sum(kind='ingest' AND json_extract(detail, '$.new_content')=0), 0),
                      coalesce(sum(CASE WHEN kind='ingest' THEN size END), 0),
                      coalesce(sum(kind='server-delete'), 0),
                      max(at)
               FROM ledger WHERE account=:account AND at>=:since AND at<:until
               AND (kind IN ('server-delete', 'server-gone', 'mailbox-changed')
                    OR (kind='ingest' AND json_extract(detail, '$.source')='pop3:'||:account))""",
            {"account": account, "since": since, "until": until},
        ).fetchone()
        return row

    def finish_run(
        self, run_id: int, status: str, counts: dict[str, int], errors: list[str]
    ) -> None:
        cols = ("listed", "new", "fetched", "duplicates", "deleted", "bytes", "retries")
        with self.transaction():
            self.conn.execute(
                f"UPDATE runs SET finished_at=?, status=?, errors=?, "
                f"{', '.join(c + '=?' for c in cols)} WHERE id=?",
                (utcnow(), status, json.dumps(errors), *(counts.get(c, 0) for c in cols), run_id),
            )

    def record_session(self, run_id: int, facts: dict[str, Any]) -> None:
        with self.transaction():
            self.conn.execute(
                "INSERT INTO sessions(run_id, started_at, host, port, tls, tls_version, "
                "tls_cert_sha256, greeting, capabilities) VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    run_id,
                    utcnow(),
                    facts["host"],
                    facts["port"],
                    facts["tls"],
                    facts.get("tls_version"),
                    facts.get("tls_cert_sha256"),
                    facts.get("greeting"),
                    json.dumps(facts.get("capabilities", [])),
                ),
            )

    # -- the UIDL map ---------------------------------------------------------------------------
    def live_uidls(self, account: str) -> dict[str, LiveUidl]:
        rows = self.conn.execute(
            "SELECT id, uidl, sha256, size, first_seen, dele_sent_at, listed_size FROM uidls "
            "WHERE account=? AND deleted_confirmed_at IS NULL",
            (account,),
        ).fetchall()
        return {row[1]: LiveUidl(*row) for row in rows}

    def record_listed_sizes(self, sizes: Sequence[tuple[int, int]]) -> None:
        """(row id, size LIST gives now) for live rows known to hold their message."""
        if sizes:
            with self.transaction():
                self._set_listed_sizes(sizes)

    def _set_listed_sizes(self, sizes: Sequence[tuple[int, int]]) -> None:
        self.conn.executemany(
            "UPDATE uidls SET listed_size=? WHERE id=?", [(size, rid) for rid, size in sizes]
        )

    def has_message(self, sha256: str) -> bool:
        row = self.conn.execute("SELECT 1 FROM messages WHERE sha256=?", (sha256,)).fetchone()
        return row is not None

    def commit_messages(
        self,
        account: str | None,
        run_id: int | None,
        source: str,
        items: Sequence[Committed],
        *,
        replaced: Sequence[int] = (),
        relisted: Sequence[tuple[int, int]] = (),
    ) -> list[tuple[bool, int | None]]:
        """Record a batch in one transaction; per item: (content was new, UIDL row id).

        ``replaced``: live UIDL rows whose UIDL the server now uses for other content (their
        message is gone); they are closed in the same transaction, before the new rows.
        ``relisted``: (row id, size) of live rows checked to still be their message, listed at
        that size now.
        Called only after the blobs are durable (``BlobStore.publish``).
        """
        now = utcnow()
        with self.transaction():
            self._mark_deleted(replaced, "server-gone", now)
            self._set_listed_sizes(relisted)
            return self._record_batch(items, source=source, account=account, run_id=run_id, now=now)

    def _record_batch(
        self,
        items: Sequence[Committed],
        *,
        source: str,
        now: str,
        account: str | None,
        run_id: int | None,
    ) -> list[tuple[bool, int | None]]:
        """What ``record_ingest`` does per item, as a handful of statements for the batch.

        Per-item INSERTs and ledger appends were a sixth of fetch's CPU.  Freshness is decided
        from one lookup of the batch's digests (inside the caller's write transaction, so no one
        else can insert meanwhile); a digest twice in one batch is fresh only the first time,
        as sequential inserts would have said.
        """
        conn = self.conn
        known = self._known_digests({item.sha256 for item in items})
        fresh: list[bool] = []
        for item in items:
            fresh.append(item.sha256 not in known)
            known.add(item.sha256)
        conn.executemany(
            "INSERT INTO messages(sha256, size, first_ingest_at, first_source) VALUES (?, ?, ?, ?)",
            [
                (it.sha256, it.size, now, source)
                for it, new in zip(items, fresh, strict=True)
                if new
            ],
        )
        row_ids = self._insert_uidls(items, account, run_id, now)
        ledger.append_many(
            conn,
            "ingest",
            (
                {
                    "account": account,
                    "uidl": it.uidl,
                    "sha256": it.sha256,
                    "size": it.size,
                    "at": now,
                    "detail": {"source": source, "new_content": new},
                }
                for it, new in zip(items, fresh, strict=True)
            ),
        )
        return list(zip(fresh, row_ids, strict=True))

    def _select_in(
        self, sql: str, values: Sequence[Any], params: Sequence[Any] = ()
    ) -> Iterator[tuple[Any, ...]]:
        """Rows of ``sql`` (ending in ``IN``) for ``values``, ``_IN_CHUNK`` host parameters at
        a time; ``params`` are the parameters before the list."""
        for i in range(0, len(values), _IN_CHUNK):
            chunk = values[i : i + _IN_CHUNK]
            yield from self.conn.execute(f"{sql} ({','.join('?' * len(chunk))})", [*params, *chunk])

    def purged_among(self, digests: Iterable[str]) -> dict[str, str]:
        """Which of ``digests`` retention purged, and when."""
        rows = self._select_in(
            "SELECT sha256, purged_at FROM messages WHERE purged_at IS NOT NULL AND sha256 IN",
            sorted(set(digests)),
        )
        return {row[0]: row[1] for row in rows}

    def _known_digests(self, digests: set[str]) -> set[str]:
        """Which of ``digests`` already have a messages row (purged tombstones included)."""
        rows = self._select_in("SELECT sha256 FROM messages WHERE sha256 IN", sorted(digests))
        return {row[0] for row in rows}

    def _insert_uidls(
        self, items: Sequence[Committed], account: str | None, run_id: int | None, now: str
    ) -> list[int | None]:
        """Insert the batch's UIDL rows; return each item's row id (None without a UIDL).

        Ids are read back by UIDL: the partial unique index allows one live row per
        (account, UIDL), and these rows were inserted live in this transaction.
        """
        if account is None:
            return [None] * len(items)
        with_uidl = [it for it in items if it.uidl is not None]
        self.conn.executemany(
            "INSERT INTO uidls(account, uidl, sha256, size, first_seen, committed_at, run_id, "
            "listed_size) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (account, it.uidl, it.sha256, it.size, it.first_seen, now, run_id, it.listed_size)
                for it in with_uidl
            ],
        )
        rows = self._select_in(
            "SELECT id, uidl FROM uidls WHERE account=? AND deleted_confirmed_at IS NULL "
            "AND uidl IN",
            [str(it.uidl) for it in with_uidl],
            [account],
        )
        ids = {uidl: row_id for row_id, uidl in rows}
        return [None if it.uidl is None else ids[it.uidl] for it in items]

    def record_ingest(
        self,
        item: Committed,
        *,
        source: str,
        now: str,
        account: str | None = None,
        run_id: int | None = None,
        detail: dict[str, Any] | None = None,
    ) -> tuple[bool, int | None]:
        """One ingest inside the caller's transaction: the message row (if its content is new),
        the UIDL row (if it came with one) and the ledger entry that records both.

        Every path that adds mail (fetch, import) goes through here, so none can skip the ledger.
        """
        cur = self.conn.execute(
            "INSERT INTO messages(sha256, size, first_ingest_at, first_source) "
            "VALUES (?, ?, ?, ?) ON CONFLICT(sha256) DO NOTHING",
            (item.sha256, item.size, now, source),
        )
        fresh = cur.rowcount == 1
        row_id: int | None = None
        if account is not None and item.uidl is not None:
            cur = self.conn.execute(
                "INSERT INTO uidls(account, uidl, sha256, size, first_seen, committed_at, "
                "run_id, listed_size) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    account,
                    item.uidl,
                    item.sha256,
                    item.size,
                    item.first_seen,
                    now,
                    run_id,
                    item.listed_size,
                ),
            )
            row_id = cur.lastrowid
        ledger.append(
            self.conn,
            "ingest",
            account=account,
            uidl=item.uidl,
            sha256=item.sha256,
            size=item.size,
            detail={"source": source, "new_content": fresh, **(detail or {})},
        )
        return fresh, row_id

    def mark_dele_sent(self, ids: Iterable[int]) -> None:
        now = utcnow()
        with self.transaction():
            self.conn.executemany(
                "UPDATE uidls SET dele_sent_at=? WHERE id=?", [(now, i) for i in ids]
            )

    def mark_deleted(self, ids: Iterable[int], *, confirmed_by_quit: bool) -> None:
        """The server confirmed (QUIT +OK) or showed (no longer listed) that these are gone."""
        now = utcnow()
        kind = "server-delete" if confirmed_by_quit else "server-gone"
        with self.transaction():
            self._mark_deleted(ids, kind, now)

    def record_deleted_without_uidl(self, account: str, deleted: Iterable[tuple[str, int]]) -> None:
        """A server without UIDL confirmed (QUIT +OK) the DELE of these (sha256, size): there
        is no UIDL row to mark, but the ledger records every deletion a server confirmed."""
        with self.transaction():
            for sha256, size in deleted:
                ledger.append(
                    self.conn, "server-delete", account=account, uidl=None, sha256=sha256, size=size
                )

    def _mark_deleted(
        self, ids: Iterable[int], kind: str, now: str, detail: dict[str, str] | None = None
    ) -> None:
        for row_id in ids:
            row = self.conn.execute(
                "SELECT account, uidl, sha256, size FROM uidls "
                "WHERE id=? AND deleted_confirmed_at IS NULL",
                (row_id,),
            ).fetchone()
            if row is None:
                continue
            self.conn.execute("UPDATE uidls SET deleted_confirmed_at=? WHERE id=?", (now, row_id))
            ledger.append(
                self.conn,
                kind,
                account=row[0],
                uidl=row[1],
                sha256=row[2],
                size=row[3],
                detail=detail,
            )

    # -- reading --------------------------------------------------------------------------------
    def message_count(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM messages").fetchone()[0])

    def iter_messages(self) -> Iterator[tuple[str, int]]:
        yield from self.conn.execute("SELECT sha256, size FROM messages ORDER BY sha256")

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return list(self.db.query(sql, params))


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, so a writer takes the lock up front instead of deadlocking."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            try:
                self.conn.execute("COMMIT")
            except BaseException:
                self._roll_back()
                raise
        else:
            self._roll_back()

    def _roll_back(self) -> None:
        """Roll back what is still open, and never hide the error that is being raised: a
        big transaction that met a full disk was already rolled back by SQLite, and a
        ROLLBACK then raised "cannot rollback - no transaction is active" in place of
        "database or disk is full" (and its fix); a COMMIT that failed left the transaction
        open, and the connection's next one failed with "cannot start a transaction within a
        transaction"."""
        if self.conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")


def _split_sql(sql: str) -> list[str]:
    """Split a migration into statements (sqlite3.complete_statement knows about quotes)."""
    statements, buf = [], ""
    for line in sql.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                statements.append(buf.strip())
            buf = ""
    if buf.strip() and not all(
        ln.strip().startswith("--") or not ln.strip() for ln in buf.splitlines()
    ):
        statements.append(buf.strip())
    return statements
