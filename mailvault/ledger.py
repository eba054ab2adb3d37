"""The append-only, hash-chained ledger of everything that changes what the vault holds.

Each entry's hash covers a canonical JSON encoding of the entry *and the previous entry's hash*,
so editing, inserting or deleting any entry breaks every hash after it.  Publishing the head
hash (``mailvault ledger head``) somewhere outside the vault therefore pins the whole history.

Entries are appended inside the same SQLite transaction as the change they record: the ledger
can never claim a commit that did not happen, nor miss one that did.  The same chain mechanics
serve the audit log (who searched, showed or exported what), kept in a second table.

This module only needs ``sqlite3`` so that the search path can append audit entries cheaply.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

# CPython's built-in SHA-256 (same digests): hashlib would load OpenSSL, ~3 ms of every search
# start-up.  The module is _sha256 up to 3.11 and _sha2 from 3.12; any other Python: hashlib.
try:
    from _sha256 import sha256
except ImportError:
    try:
        from _sha2 import sha256
    except ImportError:
        from hashlib import sha256

# `typing` is not imported at run time: it is a few ms of every `mailvault search` start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

GENESIS = "0" * 64
_HEX = frozenset("0123456789abcdef")
LEDGER_FIELDS = ("seq", "at", "kind", "account", "uidl", "sha256", "size", "detail", "prev_hash")
AUDIT_FIELDS = ("seq", "at", "os_user", "command", "query", "results", "detail", "prev_hash")

KINDS = frozenset(
    {
        "ingest",
        "server-delete",
        "server-gone",
        "mailbox-changed",
        "purge",
        "hold-add",
        "hold-release",
    }
)


# One encoder, built once: ``json.dumps`` with non-default options builds a new JSONEncoder on
# every call, which was a third of the cost of hashing a ledger entry.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
_DETAIL = json.JSONEncoder(sort_keys=True)  # what json.dumps(detail, sort_keys=True) writes


def canonical(entry: dict[str, Any], fields: tuple[str, ...] = LEDGER_FIELDS) -> bytes:
    """The bytes an entry hash is computed over: sorted keys, no whitespace, UTF-8."""
    return _CANONICAL.encode({k: entry.get(k) for k in fields}).encode("utf-8")


def entry_hash(entry: dict[str, Any], fields: tuple[str, ...] = LEDGER_FIELDS) -> str:
    digest: str = sha256(canonical(entry, fields)).hexdigest()
    return digest


def _append(
    conn: sqlite3.Connection, table: str, fields: tuple[str, ...], values: dict[str, Any]
) -> dict[str, Any]:
    return _append_many(conn, table, fields, [values])[0]


def _append_many(
    conn: sqlite3.Connection,
    table: str,
    fields: tuple[str, ...],
    values: Iterable[dict[str, Any]],
) -> list[dict[str, Any]]:
    """Chain several entries onto the head: one read of the head and one ``executemany``.

    The chain is computed in Python from the head read inside the caller's (write-locked)
    transaction, so the result is exactly what as many single appends would have written.
    """
    row = conn.execute(f"SELECT seq, entry_hash FROM {table} ORDER BY seq DESC LIMIT 1").fetchone()
    seq, prev = (row[0], row[1]) if row else (0, GENESIS)
    now = datetime.now(UTC).isoformat()
    entries: list[dict[str, Any]] = []
    for value in values:
        seq += 1
        entry = {k: value.get(k) for k in fields}
        entry.update(seq=seq, prev_hash=prev, at=value.get("at") or now)
        prev = entry["entry_hash"] = entry_hash(entry, fields)
        entries.append(entry)
    columns = (*fields, "entry_hash")
    conn.executemany(
        f"INSERT INTO {table}({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
        [[entry[c] for c in columns] for entry in entries],
    )
    return entries


def append(
    conn: sqlite3.Connection,
    kind: str,
    *,
    account: str | None = None,
    uidl: str | None = None,
    sha256: str | None = None,
    size: int | None = None,
    detail: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Append one ledger entry; call inside the transaction of the change it records."""
    row = {"account": account, "uidl": uidl, "sha256": sha256, "size": size, "detail": detail}
    return append_many(conn, kind, [row])[0]


def append_many(
    conn: sqlite3.Connection, kind: str, rows: Iterable[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Append one ``kind`` entry per row (keys as for ``append``), in order, in one statement;
    the entries as written.

    For group commits: a batch of 256 ingests costs one head lookup and one ``executemany``
    instead of 256 of each.  Call inside the transaction of the change it records.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown ledger kind {kind!r}")
    values = [
        {
            "kind": kind,
            "account": row.get("account"),
            "uidl": row.get("uidl"),
            "sha256": row.get("sha256"),
            "size": row.get("size"),
            "at": row.get("at"),
            "detail": _DETAIL.encode(row["detail"]) if row.get("detail") else None,
        }
        for row in rows
    ]
    return _append_many(conn, "ledger", LEDGER_FIELDS, values) if values else []


def append_audit(
    conn: sqlite3.Connection,
    *,
    os_user: str,
    command: str,
    query: str | None,
    results: int,
    detail: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return _append(
        conn,
        "audit",
        AUDIT_FIELDS,
        {
            "os_user": os_user,
            "command": command,
            "query": query,
            "results": results,
            "detail": _DETAIL.encode(detail) if detail else None,
        },
    )


def parse_detail(text: str | None) -> dict[str, Any]:
    """A ledger or audit entry's detail (JSON text) as a dict; {} when there is none or it is
    no JSON object (an entry written by hand is read, not trusted)."""
    try:
        detail = json.loads(text) if text else {}
    except ValueError:
        return {}
    return detail if isinstance(detail, dict) else {}


def iter_entries(conn: sqlite3.Connection, table: str = "ledger") -> Iterator[dict[str, Any]]:
    fields = LEDGER_FIELDS if table == "ledger" else AUDIT_FIELDS
    cursor = conn.execute(f"SELECT {', '.join((*fields, 'entry_hash'))} FROM {table} ORDER BY seq")
    for row in cursor:
        yield dict(zip((*fields, "entry_hash"), row, strict=True))


def check_chain(
    entries: Iterable[dict[str, Any]], fields: tuple[str, ...] = LEDGER_FIELDS
) -> list[str]:
    """Every break in the chain, each as one line naming the sequence number."""
    return list(chain_problems(entries, fields))


def chain_problems(
    entries: Iterable[dict[str, Any]], fields: tuple[str, ...] = LEDGER_FIELDS
) -> Iterator[str]:
    """``check_chain``'s breaks, each as soon as its entry is read: ``entries`` is walked
    once, an entry at a time, so a chain of any length is checked in constant memory."""
    prev, expected_seq = GENESIS, 1
    for entry in entries:
        seq = entry.get("seq")
        if seq != expected_seq:
            yield f"entry {seq}: expected sequence {expected_seq} (an entry is missing or reordered)"
        if entry.get("prev_hash") != prev:
            yield f"entry {seq}: prev_hash does not match the hash of entry {expected_seq - 1}"
        actual = entry_hash(entry, fields)
        if entry.get("entry_hash") != actual:
            yield f"entry {seq}: entry_hash does not match its content (edited)"
        prev = str(entry.get("entry_hash"))
        expected_seq = (seq if isinstance(seq, int) else expected_seq) + 1


def is_hash(text: str) -> bool:
    """A sha256 hex digest as entry hashes are written (64 lower-case hex digits); without
    ``re``, which this module (on every search's start-up path) does not otherwise need."""
    return len(text) == 64 and _HEX.issuperset(text)


def parse_head(text: str) -> tuple[int | None, str]:
    """A notarised head as a user gives it back: ``SEQ HASH`` (as `ledger head` and `audit
    --head` print it), ``SEQ:HASH``, or a bare ``HASH`` (seq None).

    The one parser of `verify --ledger-head/--audit-head` and `ledger check --head`, so that a
    head one of them accepts is never misread by the other.  ValueError (one line, naming the
    forms) when ``text`` is none of them.
    """
    stripped = text.strip()
    seq, sep, digest = stripped.replace(" ", ":", 1).partition(":")
    if not sep:
        seq, digest = "", stripped
    digest = digest.strip()
    if (sep and not (seq.isascii() and seq.isdigit())) or not is_hash(digest):
        raise ValueError(
            f'{text!r} is not a head; give "SEQ HASH" as `ledger head` prints it (or SEQ:HASH, '
            "or the bare HASH)"
        )
    return (int(seq) if sep else None), digest


def head(conn: sqlite3.Connection, table: str = "ledger") -> tuple[int, str]:
    row = conn.execute(f"SELECT seq, entry_hash FROM {table} ORDER BY seq DESC LIMIT 1").fetchone()
    return (int(row[0]), str(row[1])) if row else (0, GENESIS)
