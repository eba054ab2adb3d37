"""Parse results into the catalog (tables ``message_meta``, ``addresses``, ``parts``; migration 2).

A batch is written in one transaction, so a crash leaves each message either fully recorded or
not at all, and ``unparsed_sha256s`` finds the rest on the next run.  Writing the same message
again replaces its rows (re-parsing is idempotent) and clears ``indexed_at``, because the index
document built from the old rows may no longer match.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from mailvault.catalog import Catalog, utcnow
from mailvault.parse.model import ParsedMessage

_ROLES = (
    ("from", "from_"),
    ("to", "to"),
    ("cc", "cc"),
    ("bcc", "bcc"),
    ("reply-to", "reply_to"),
    ("sender", "sender"),
)

_META_COLUMNS = (
    "sha256",
    "message_id",
    "subject",
    "date",
    "date_raw",
    "date_fallback",
    "from_addr",
    "from_name",
    "list_id",
    "in_reply_to",
    "thread_id",
    "has_attachment",
    "attachment_count",
    "unreadable",
    "defects",
    "parsed_at",
    "indexed_at",
)
_INSERT_META = (
    f"INSERT INTO message_meta({', '.join(_META_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _META_COLUMNS)})"
)


def _meta_row(item: ParsedMessage, now: str) -> tuple[Any, ...]:
    first = item.from_[0] if item.from_ else None
    return (
        item.sha256,
        item.message_id,
        item.subject,
        item.date.isoformat() if item.date is not None else now,
        item.date_raw,
        int(item.date_fallback),
        first.addr if first else "",
        first.name if first else "",
        item.list_id,
        item.in_reply_to,
        item.thread_id,
        int(bool(item.attachments)),
        len(item.attachments),
        int(item.unreadable),
        json.dumps(list(item.defects), ensure_ascii=False),
        now,
        None,
    )


def store_parsed(catalog: Catalog, items: Sequence[ParsedMessage]) -> None:
    """Record a batch of parse results in one transaction, replacing earlier rows."""
    if not items:
        return
    now = utcnow()
    latest = {item.sha256: item for item in items}  # a sha256 twice in a batch: last wins
    keys = [(sha,) for sha in latest]
    addresses = [
        (item.sha256, role, position, address.name, address.addr)
        for item in latest.values()
        for role, attr in _ROLES
        for position, address in enumerate(getattr(item, attr))
    ]
    parts = [
        (item.sha256, a.index, a.content_type, a.filename, a.size, a.sha256, len(a.text))
        for item in latest.values()
        for a in item.attachments
    ]
    with catalog.transaction() as conn:
        conn.executemany("DELETE FROM addresses WHERE sha256=?", keys)
        conn.executemany("DELETE FROM parts WHERE sha256=?", keys)
        conn.executemany("DELETE FROM message_meta WHERE sha256=?", keys)
        conn.executemany(_INSERT_META, [_meta_row(item, now) for item in latest.values()])
        conn.executemany(
            "INSERT INTO addresses(sha256, role, position, name, addr) VALUES (?, ?, ?, ?, ?)",
            addresses,
        )
        conn.executemany(
            "INSERT OR IGNORE INTO parts(sha256, idx, content_type, filename, size, part_sha256, "
            "text_chars) VALUES (?, ?, ?, ?, ?, ?, ?)",
            parts,
        )


def unparsed_sha256s(catalog: Catalog, limit: int | None = None) -> list[str]:
    """Messages in the catalog with no parse result yet, in sha256 order."""
    sql = (
        "SELECT m.sha256 FROM messages m WHERE NOT EXISTS "
        "(SELECT 1 FROM message_meta p WHERE p.sha256 = m.sha256) ORDER BY m.sha256"
    )
    params: tuple[int, ...] = ()
    if limit is not None:
        sql += " LIMIT ?"
        params = (limit,)
    return [row[0] for row in catalog.db.execute(sql, params).fetchall()]
