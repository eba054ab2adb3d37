"""Which messages an export covers, in a stable order.

The whole vault, the messages of one account (fetched by it, or imported with ``--account``),
the hits of a search query, or the hits of a query within an account.  Purged messages (their
blob is gone, only the tombstone row stays) are never selected.  The order is always
``first_ingest_at, sha256``, so two exports of the same selection list the same messages in the
same order.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from mailvault.catalog import Catalog
from mailvault.errors import UsageError
from mailvault.vault import Vault

if TYPE_CHECKING:
    from mailvault.search import Searcher

_TEMP = "export_selection"


@dataclass(frozen=True, slots=True)
class Selected:
    sha256: str
    size: int
    first_ingest_at: str

    @property
    def ingested(self) -> datetime:
        return datetime.fromisoformat(self.first_ingest_at)


def query_searcher(vault: Vault, query: str) -> Searcher:
    """The search index's searcher for ``query`` (its ``ids()`` gives the hits)."""
    try:
        from mailvault import search
    except ImportError as exc:  # pragma: no cover - the search module ships with mailvault
        raise UsageError(
            f"query export needs the search index: {exc}; export the whole vault or use --account"
        ) from None
    if not (vault.index_path / "meta.json").exists():
        raise UsageError(
            f"query export needs the search index, and {vault.index_path} has none yet; run "
            "`mailvault index` first, or export the whole vault or one --account"
        )
    return search.Searcher(vault.index_path, query)


class Selection:
    """The selected messages; iterate it (streams from SQLite) after ``count()`` if wanted."""

    def __init__(
        self, vault: Vault, catalog: Catalog, *, query: str | None, account: str | None
    ) -> None:
        self.catalog = catalog
        self.query = query
        self.account = account
        self.unindexed = 0  # archived messages a query could not match: not indexed yet
        where = ["m.purged_at IS NULL"]
        params: dict[str, Any] = {}
        if account is not None:
            self._check_account(vault, account)
            where.append(
                "m.sha256 IN (SELECT sha256 FROM uidls WHERE account = :account "
                "UNION SELECT sha256 FROM imports WHERE account = :account)"
            )
            params["account"] = account
        if query is not None:
            self._load_query(vault, query)
            where.append(f"m.sha256 IN (SELECT sha256 FROM temp.{_TEMP})")
        self._where = " AND ".join(where)
        self._params = params

    def _check_account(self, vault: Vault, account: str) -> None:
        known = {
            str(row[0])
            for row in self.catalog.conn.execute(
                "SELECT name FROM accounts UNION SELECT DISTINCT account FROM uidls "
                "UNION SELECT DISTINCT account FROM imports WHERE account IS NOT NULL"
            )
        } | set(vault.config.accounts)
        if account not in known:
            names = ", ".join(sorted(known)) or "none yet"
            raise UsageError(
                f"unknown account {account!r}: no configured, fetched or imported account has "
                f"that name (known: {names})"
            )

    def _load_query(self, vault: Vault, query: str) -> None:
        conn = self.catalog.conn
        conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {_TEMP} (sha256 TEXT PRIMARY KEY)")
        conn.execute(f"DELETE FROM temp.{_TEMP}")
        searcher = query_searcher(vault, query)
        # ids only, a batch at a time: the hits' stored documents (with their bodies) are
        # never read, and the ids wait in SQLite, so memory stays flat however many match
        for batch in searcher.ids():
            conn.executemany(
                f"INSERT OR IGNORE INTO temp.{_TEMP} VALUES (?)", ((i,) for i in batch)
            )
        from mailvault.search.command import index_gap

        self.unindexed, _ = index_gap(vault.root, searcher.searcher.num_docs)

    def count(self) -> int:
        row = self.catalog.conn.execute(
            f"SELECT count(*) FROM messages AS m WHERE {self._where}", self._params
        ).fetchone()
        return int(row[0])

    def __iter__(self) -> Iterator[Selected]:
        cursor = self.catalog.conn.execute(
            f"SELECT m.sha256, m.size, m.first_ingest_at FROM messages AS m "
            f"WHERE {self._where} ORDER BY m.first_ingest_at, m.sha256",
            self._params,
        )
        for sha256, size, first_ingest_at in cursor:
            yield Selected(str(sha256), int(size), str(first_ingest_at))
