"""Parse results in the catalog: the migration, the rows written, idempotent re-parsing."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mailvault.catalog import Catalog, Committed
from mailvault.parse import Address, Attachment, ParsedMessage
from mailvault.parse_store import store_parsed, unparsed_sha256s

SHA_A = "a" * 64
SHA_B = "b" * 64


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    cat = Catalog(tmp_path / "c.sqlite")
    cat.commit_messages(
        None,
        None,
        "import:test",
        [Committed(SHA_A, 100, None, "2026-01-01T00:00:00+00:00"), Committed(SHA_B, 50, None, "x")],
    )
    return cat


def sample(sha256: str = SHA_A) -> ParsedMessage:
    return ParsedMessage(
        sha256=sha256,
        size=100,
        message_id="m1@example.com",
        subject="Grüße",
        from_=(Address("Alice", "alice@example.com"),),
        to=(Address("Bob", "bob@example.com"), Address("", "carol@example.com")),
        cc=(Address("Dan", "dan@example.com"),),
        reply_to=(Address("", "list@example.com"),),
        date=datetime(2024, 4, 1, 8, 0, tzinfo=UTC),
        date_raw="Mon, 1 Apr 2024 10:00:00 +0200",
        in_reply_to="m0@example.com",
        references=("root@example.com", "m0@example.com"),
        list_id="dev.example.org",
        thread_id="root@example.com",
        body_text="hello",
        attachments=(
            Attachment(2, "report.pdf", "application/pdf", 1234, "c" * 64, "pdf words"),
            Attachment(3, "", "image/png", 10, "d" * 64),
        ),
        defects=("bytes: bare LF line endings", "date: missing"),
    )


def test_migration_2_creates_the_tables(catalog: Catalog) -> None:
    assert catalog.schema_version >= 2
    tables = {r["name"] for r in catalog.rows("SELECT name FROM sqlite_master")}
    assert {"message_meta", "addresses", "parts", "message_meta_unindexed"} <= tables


def test_rows_as_expected(catalog: Catalog) -> None:
    store_parsed(catalog, [sample()])
    (meta,) = catalog.rows("SELECT * FROM message_meta")
    assert meta["sha256"] == SHA_A
    assert meta["message_id"] == "m1@example.com"
    assert meta["subject"] == "Grüße"
    assert meta["date"] == "2024-04-01T08:00:00+00:00"
    assert meta["date_raw"] == "Mon, 1 Apr 2024 10:00:00 +0200"
    assert meta["date_fallback"] == 0
    assert (meta["from_addr"], meta["from_name"]) == ("alice@example.com", "Alice")
    assert meta["list_id"] == "dev.example.org"
    assert meta["in_reply_to"] == "m0@example.com"
    assert meta["thread_id"] == "root@example.com"
    assert (meta["has_attachment"], meta["attachment_count"], meta["unreadable"]) == (1, 2, 0)
    assert json.loads(meta["defects"]) == ["bytes: bare LF line endings", "date: missing"]
    assert meta["parsed_at"] and meta["indexed_at"] is None
    addresses = catalog.rows(
        "SELECT role, position, name, addr FROM addresses ORDER BY role, position"
    )
    assert [tuple(r.values()) for r in addresses] == [
        ("cc", 0, "Dan", "dan@example.com"),
        ("from", 0, "Alice", "alice@example.com"),
        ("reply-to", 0, "", "list@example.com"),
        ("to", 0, "Bob", "bob@example.com"),
        ("to", 1, "", "carol@example.com"),
    ]
    parts = catalog.rows("SELECT * FROM parts ORDER BY idx")
    assert [tuple(r.values()) for r in parts] == [
        (SHA_A, 2, "application/pdf", "report.pdf", 1234, "c" * 64, 9),
        (SHA_A, 3, "image/png", "", 10, "d" * 64, 0),
    ]


def test_store_is_idempotent_and_replaces(catalog: Catalog) -> None:
    store_parsed(catalog, [sample()])
    store_parsed(catalog, [sample()])
    tables = ("message_meta", "addresses", "parts")
    counts = [catalog.rows(f"SELECT count(*) AS n FROM {t}")[0]["n"] for t in tables]
    assert counts == [1, 5, 2]
    catalog.db.execute("UPDATE message_meta SET indexed_at='2026-01-01'")
    store_parsed(catalog, [replace(sample(), subject="new", to=(), attachments=())])
    (meta,) = catalog.rows("SELECT subject, attachment_count, indexed_at FROM message_meta")
    assert meta == {"subject": "new", "attachment_count": 0, "indexed_at": None}
    assert catalog.rows("SELECT count(*) AS n FROM addresses WHERE role='to'")[0]["n"] == 0
    assert catalog.rows("SELECT count(*) AS n FROM parts")[0]["n"] == 0


def test_unparsed_sha256s(catalog: Catalog) -> None:
    assert unparsed_sha256s(catalog) == [SHA_A, SHA_B]
    assert unparsed_sha256s(catalog, limit=1) == [SHA_A]
    store_parsed(catalog, [sample(SHA_A)])
    assert unparsed_sha256s(catalog) == [SHA_B]
    store_parsed(catalog, [sample(SHA_B)])
    assert unparsed_sha256s(catalog) == []


def test_a_failed_batch_writes_nothing(catalog: Catalog) -> None:
    unknown = sample("e" * 64)  # no messages row: the foreign key refuses it
    with pytest.raises(sqlite3.IntegrityError):
        store_parsed(catalog, [sample(SHA_A), unknown])
    assert catalog.rows("SELECT count(*) AS n FROM message_meta")[0]["n"] == 0
    assert unparsed_sha256s(catalog) == [SHA_A, SHA_B]


def test_unreadable_message_without_date_is_stored(catalog: Catalog) -> None:
    bare = ParsedMessage(sha256=SHA_B, size=0, message_id="", subject="", unreadable=True)
    store_parsed(catalog, [bare])
    (meta,) = catalog.rows("SELECT unreadable, date, has_attachment FROM message_meta")
    assert meta["unreadable"] == 1 and meta["date"] and meta["has_attachment"] == 0
