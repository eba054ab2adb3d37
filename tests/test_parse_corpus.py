"""Every file of the shared third-party corpora parses; the outcome counts are pinned.

The counts are hard-coded so that any change in what the parser calls defective or unreadable
shows up here and is a decision, not an accident.  Mailbox files are parsed as one blob each.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import pytest

from mailvault.parse import ParsedMessage, parse_message
from tests.prereq import corpora_dir

INGEST = datetime(2026, 1, 1, tzinfo=UTC)

EXPECTED_FILES = 1551
EXPECTED_DEFECTIVE = 1157  # one holds a text attachment over the 100,000 characters read
EXPECTED_UNREADABLE = 3
EXPECTED_DATE_FALLBACK = 347


@pytest.fixture(scope="module")
def parsed() -> dict[str, ParsedMessage]:
    manifest = corpora_dir() / "MANIFEST.tsv"
    results: dict[str, ParsedMessage] = {}
    for line in manifest.read_text(encoding="utf-8").splitlines()[1:]:
        path, sha256, size, _set = line.split("\t")
        raw = (corpora_dir() / path).read_bytes()
        assert len(raw) == int(size), path
        results[path] = parse_message(raw, sha256, ingest_time=INGEST)
    return results


def test_every_file_parses(parsed: dict[str, ParsedMessage]) -> None:
    assert len(parsed) == EXPECTED_FILES
    assert all(isinstance(m, ParsedMessage) for m in parsed.values())


def test_outcome_counts(parsed: dict[str, ParsedMessage]) -> None:
    counts = Counter(
        defective=sum(1 for m in parsed.values() if m.defects),
        unreadable=sum(1 for m in parsed.values() if m.unreadable),
        date_fallback=sum(1 for m in parsed.values() if m.date_fallback),
    )
    assert counts == Counter(
        defective=EXPECTED_DEFECTIVE,
        unreadable=EXPECTED_UNREADABLE,
        date_fallback=EXPECTED_DATE_FALLBACK,
    )


def test_no_parse_fell_back_to_the_scan(parsed: dict[str, ParsedMessage]) -> None:
    """The stdlib parser read every corpus file; the regex fallback is for worse than these."""
    crashed = [p for p, m in parsed.items() if any(": " in d and "Error" in d for d in m.defects)]
    assert crashed == []


def test_unreadable_ones_are_the_headerless_documents(parsed: dict[str, ParsedMessage]) -> None:
    unreadable = sorted(p for p, m in parsed.items() if m.unreadable)
    assert unreadable == [
        "enmime/mail/erroneous.raw",
        "mime4j/testmsgs/malformedHeader-noheader.msg",
        "mime4j/testmsgs/malformedHeaderStartsBody-noheader.msg",
    ]
    assert all(parsed[p].body_text for p in unreadable)


def test_known_messages_read_correctly(parsed: dict[str, ParsedMessage]) -> None:
    torture = parsed["flanker/torture.eml"]
    assert torture.subject == "Multi-media mail demonstration"
    assert torture.from_[0].addr == "mrc@cac.washington.edu"
    assert len(torture.attachments) >= 8
    hasen = parsed["hunnysoft-samples/m0001.txt"]
    assert "Frösche" in hasen.subject
    assert "mißliche Lage" in hasen.body_text
