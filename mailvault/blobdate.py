"""The date a message's age counts from, read again from its blob, for retention and verify.

Retention counts a message's age from ``message_meta.date`` (its Date header as the parser read
it) or, with no readable Date, from its first ingest.  Both are rows anyone with write access to
``catalog.sqlite`` can change, and a date moved back by hand would purge recent mail.  So before
it purges a message retention derives the date again from the blob (hashed as it is read) and
the first ingest from the ledger, and ``verify`` compares every message's row with its blob.

Cheap first: the first ``Date:`` field of the header block, read as the parser reads a Date
value.  Only when that disagrees with the catalog is the message parsed whole, as the indexer
parses it, so a header the quick reading gets wrong never counts as a disagreement.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from mailvault.store import BlobStore

HEAD_MAX = 256 * 1024  # the header block is looked for in this much of the message
# The catalog's first_ingest_at is taken when a batch starts to commit, its ledger entry's time
# as it is appended: seconds apart at most; a day leaves room and no room for a forged date.
INGEST_SLACK = timedelta(days=1)


def moment(text: object) -> datetime | None:
    """A time as the catalog and the ledger write them (ISO 8601 with a zone), or None for
    anything else: a value edited by hand must be reported, not crash the reader."""
    if not isinstance(text, str):
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None
    return value if value.tzinfo is not None else None


def catalog_date(date: str | None, fallback: object) -> datetime | None:
    """The Date header's time as the catalog has it (``message_meta.date``), or None when the
    parser found none it could read (``date_fallback``: the date is then the ingest's);
    ValueError for a value that is no such time (edited by hand)."""
    if not date or fallback:
        return None
    value = moment(date)
    if value is None:
        raise ValueError(f"{date!r} is not a date")
    return value


def ingests_agree(catalog: str, ledger: str) -> bool:
    """Whether the catalog's first ingest and the ledger's are one moment (``INGEST_SLACK``):
    retention counts the age of a message without a readable Date from the catalog's."""
    first, recorded = moment(catalog), moment(ledger)
    return first is not None and recorded is not None and abs(first - recorded) <= INGEST_SLACK


_HEADER_END = re.compile(rb"\r?\n\r?\n")
_DATE_FIELD = re.compile(rb"date[ \t]*:", re.IGNORECASE)


def read_head(chunks: Iterable[bytes]) -> bytes:
    """The first ``HEAD_MAX`` bytes of a message, reading ``chunks`` to the end (so that
    ``BlobStore.iter_verified`` checks the hash)."""
    head = bytearray()
    for chunk in chunks:
        if len(head) < HEAD_MAX:
            head += chunk[: HEAD_MAX - len(head)]
    return bytes(head)


def header_date(head: bytes) -> datetime | None:
    """The message's Date as the parser reads it, from its first Date field; None when there
    is none or it cannot be read (the parser then dates the message by its ingest)."""
    from mailvault.parse.headers import parse_date

    end = _HEADER_END.search(head)
    block = head[: end.start()] if end else head
    lines = block.split(b"\n")
    for number, line in enumerate(lines):
        match = _DATE_FIELD.match(line)
        if match is None:
            continue
        value = [line[match.end() :]]
        for more in lines[number + 1 :]:
            if more[:1] not in (b" ", b"\t"):
                break
            value.append(more)
        text = b"\n".join(value).decode("ascii", "surrogateescape")
        date, _raw, fell_back, _defect = parse_date(text, datetime.now(UTC))
        return None if fell_back else date
    return None


def parsed_date(store: BlobStore, sha256: str) -> datetime | None:
    """The Date the indexer's parse of the whole (hash-checked) blob gives; None when it
    dates the message by its ingest."""
    from mailvault.parse.skeleton import parse_chunks

    parsed = parse_chunks(store.iter_verified(sha256), sha256, ingest_time=datetime.now(UTC))
    return None if parsed.date_fallback else parsed.date


def blob_date(
    store: BlobStore, sha256: str, head: bytes, catalog: datetime | None
) -> datetime | None:
    """The blob's Date (None: it has no readable one), read quickly from ``head``, and by a
    whole parse only when the quick reading disagrees with ``catalog``, the catalog's header
    date (None: the catalog dates the message by its ingest)."""
    quick = header_date(head)
    if quick == catalog:
        return quick
    return parsed_date(store, sha256)
