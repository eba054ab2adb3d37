"""The streaming byte transforms give the same result wherever the chunk boundaries fall."""

from __future__ import annotations

import email.utils
import re
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from mailvault.export.transform import (
    HEADER_CAP,
    MboxrdQuoter,
    MboxrdUnquoter,
    asctime,
    from_line,
    header_end,
    message_meta,
    peek_header,
    to_lf,
)
from mailvault.importer.mbox import SEPARATOR, WEAK, classify
from mailvault.maildate import parse_date

PIECES = [b"\r", b"\n", b">", b"From ", b"Fro", b"m ", b"x", b"From", b" ", b">>"]
messages = st.lists(st.sampled_from(PIECES), max_size=60).map(b"".join)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


def run(transform: MboxrdQuoter | MboxrdUnquoter, chunks: list[bytes]) -> bytes:
    return b"".join(transform.feed(c) for c in chunks) + transform.flush()


def quote_reference(data: bytes) -> bytes:
    return re.sub(rb"(?m)^(>*From )", rb">\1", data)


def unquote_reference(data: bytes) -> bytes:
    return re.sub(rb"(?m)^>(>*From )", rb"\1", data)


@settings(max_examples=400)
@given(messages, st.lists(st.integers(min_value=0, max_value=400), max_size=12))
def test_mboxrd_quoting_is_chunking_independent_and_reversible(
    data: bytes, cuts: list[int]
) -> None:
    chunks = chunked(data, cuts)
    quoted = run(MboxrdQuoter(), chunks)
    assert quoted == quote_reference(data)
    assert not re.search(rb"(?m)^From ", quoted)  # no line can be taken for a separator
    assert run(MboxrdUnquoter(), chunked(quoted, cuts)) == data
    assert unquote_reference(quoted) == data


@settings(max_examples=400)
@given(messages, st.lists(st.integers(min_value=0, max_value=400), max_size=12))
def test_crlf_to_lf_is_chunking_independent(data: bytes, cuts: list[int]) -> None:
    assert b"".join(to_lf(chunked(data, cuts))) == data.replace(b"\r\n", b"\n")


def test_a_cr_at_a_chunk_boundary_before_lf_is_one_line_break() -> None:
    assert b"".join(to_lf([b"a\r", b"\nb\r", b"\r", b"\n", b"\r"])) == b"a\nb\r\n\r"


def test_header_peek_replays_the_whole_message() -> None:
    header = b"A: 1\r\nB: 2\r\n"
    body = b"x" * 3_000_000
    chunks = [(header + b"\r\n" + body)[i : i + 1000] for i in range(0, 3_000_014, 1000)]
    peeked, replay = peek_header(iter(chunks))
    assert peeked == header
    assert b"".join(replay) == header + b"\r\n" + body
    huge = [b"X: " + b"y" * 100 + b"\r\n"] * 20_000  # no blank line within the cap
    peeked, replay = peek_header(iter(huge))
    assert len(peeked) == HEADER_CAP
    assert b"".join(replay) == b"".join(huge)
    assert header_end(b"\r\nbody") == 0
    assert header_end(b"A: b\n\nbody") == 5


def test_from_line_sender_and_date() -> None:
    ingest = datetime(2020, 5, 6, 7, 8, 9, tzinfo=UTC)
    meta = message_meta(
        b"Return-Path: <r@x.org>\r\nFrom: f@x.org\r\nDate: Fri, 8 Jul 2011 12:08:34 +0200\r\n",
        ingest,
    )
    assert from_line(meta) == b"From r@x.org Fri Jul  8 10:08:34 2011\n"
    meta = message_meta(b"From: Bob <b@x.org>\r\nDate: nonsense\r\n", ingest)
    assert (from_line(meta), meta.date_from_header) == (
        b"From b@x.org Wed May  6 07:08:09 2020\n",
        False,
    )
    assert from_line(message_meta(b"Return-Path: <>\r\n", ingest)).startswith(
        b"From MAILER-DAEMON "
    )
    assert from_line(message_meta(b"From: <a b@x>\r\n", ingest)).startswith(b"From MAILER-DAEMON ")
    # a Return-Path no From_ line can hold falls back to From (it gave MAILER-DAEMON)
    spaced = message_meta(b'Return-Path: <"john doe"@x.org>\r\nFrom: j@x.org\r\n', ingest)
    assert from_line(spaced).startswith(b"From j@x.org ")
    folded = message_meta(b"Message-ID:\r\n <folded@x>\r\nSubject: s\r\n", ingest)
    assert folded.message_id == "folded@x"


def reference_date(value: str) -> datetime | None:
    """What the email package makes of a Date value, normalised as the export normalises it."""
    try:
        date = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    date = date if date.tzinfo else date.replace(tzinfo=UTC)
    try:
        return date.astimezone(UTC)
    except (OverflowError, ValueError):
        return None


DATE_TOKENS = st.tuples(
    st.sampled_from(["", "Sat, ", "Mon,", "Xyz, ", "sat, "]),
    st.integers(0, 35),
    st.sampled_from(["Jan", "Feb", "Dec", "jan", "Foo"]),
    st.sampled_from([0, 1, 99, 999, 1000, 1970, 2024, 9999]),
    st.integers(0, 25),
    st.integers(0, 61),
    st.integers(0, 61),
    st.sampled_from(["+", "-"]),
    st.integers(0, 2500),
    st.sampled_from(["", " (CET)", " GMT"]),
)


@given(DATE_TOKENS)
@settings(max_examples=400)
def test_parse_date_agrees_with_the_email_package(tokens: tuple) -> None:  # type: ignore[type-arg]
    weekday, day, month, year, hour, minute, second, sign, zone, tail = tokens
    value = (
        f"{weekday}{day:02d} {month} {year:04d} {hour:02d}:{minute:02d}:{second:02d} "
        f"{sign}{zone:04d}{tail}"
    )
    if year >= 100:
        assert parse_date(value) == reference_date(value)
        return
    # the email package reads a year below 100 as two-digit (0001 as 2001): asked about the
    # same date 2400 years later (the same calendar), the answer is moved back
    later = reference_date(value.replace(f" {year:04d} ", f" {year + 2400} ", 1))
    try:
        want = None if later is None else later.replace(year=later.year - 2400)
    except ValueError:  # before the year 1
        want = None
    assert parse_date(value) == want


def test_a_year_written_with_four_digits_is_taken_literally() -> None:
    """`Date: 01 Jan 0001` was read as 2001 (Python's two-digit-year rule applied to 0001)."""
    assert parse_date("Mon, 01 Jan 0001 00:00:00 +0000") == datetime(1, 1, 1, tzinfo=UTC)
    assert parse_date("01 Jan 0001 00:00:00 +0000") == datetime(1, 1, 1, tzinfo=UTC)
    assert parse_date("Sat, 30 Jun 0099 09:33:50 -0500") == datetime(
        99, 6, 30, 14, 33, 50, tzinfo=UTC
    )
    assert parse_date("Jan  1 0050 10:00:00") == datetime(50, 1, 1, 10, tzinfo=UTC)
    assert parse_date("Thu, 29 Feb 0004 10:00:00 +0000") == datetime(4, 2, 29, 10, tzinfo=UTC)
    assert parse_date("Mon, 1 Jan 0000 00:00:00 +0000") is None  # there is no year 0
    assert parse_date("Mon, 1 Jan 0001 00:00:00 +0100") is None  # 31 Dec of the year 0 UTC
    # a year written with two digits is still one (RFC 5322 4.3), a signless zone no year
    assert parse_date("Mon, 1 Jan 01 00:00:00 +0000") == datetime(2001, 1, 1, tzinfo=UTC)
    assert parse_date("Fri, 8 Jul 2011 12:08 0000") == datetime(2011, 7, 8, 12, 8, tzinfo=UTC)


def test_a_two_digit_year_is_read_as_rfc_5322_says() -> None:
    """RFC 5322 4.3: 00..49 are 2000..2049 and 50..99 are 1950..1999; the email package takes
    50..68 for 2050..2068 (POSIX's pivot at 69), a century late."""
    assert parse_date("Mon, 1 Jan 50 10:00:00 +0000") == datetime(1950, 1, 1, 10, tzinfo=UTC)
    assert parse_date("2 Jan 68 10:00:00 GMT") == datetime(1968, 1, 2, 10, tzinfo=UTC)
    assert parse_date("3 Jan 69 10:00:00 +0000") == datetime(1969, 1, 3, 10, tzinfo=UTC)
    assert parse_date("4 Jan 49 10:00:00 +0000") == datetime(2049, 1, 4, 10, tzinfo=UTC)
    assert parse_date("5 Jan 1950 10:00:00 +0000") == datetime(1950, 1, 5, 10, tzinfo=UTC)


def test_the_from_line_of_a_message_dated_before_the_year_1000_separates() -> None:
    """asctime wrote the year 999 as "999": no mbox reader takes that line for a separator,
    so an mbox export of such a message was joined to the one before it on import."""
    for year in (1, 99, 999):
        line = asctime(datetime(year, 1, 1, tzinfo=UTC))
        assert line.endswith(f" {year:04d}")
        assert classify(f"From MAILER-DAEMON {line}".encode()) == SEPARATOR


def test_parse_date_reads_the_unusual_forms_the_long_way() -> None:
    for value in ("8 Jul 2011 12:08 +0200", "Fri, 8 Jul 11 12:08:34 -0000", "Fri, 8 Jul 2011"):
        assert parse_date(value) == reference_date(value)
    assert parse_date("Fri, 08 Jul 2011 12:08:34 -0000") == datetime(
        2011, 7, 8, 12, 8, 34, tzinfo=UTC
    )
    assert parse_date("nonsense") is None


def test_from_line_classification() -> None:
    assert classify(b"From MAILER-DAEMON Fri Jul  8 12:08:34 2011") == SEPARATOR
    assert classify(b"From user@domain  Sat Mar 24 23:00:00 2007 +0200") == SEPARATOR
    assert classify(b"From - Tue, 02 Oct 2007 00:26:47") == SEPARATOR
    assert classify(b"From -") == SEPARATOR
    assert classify(b"From 1844347792267117879@xxx") == SEPARATOR
    assert classify(b"From ") == WEAK
    assert classify(b"From Russia with love") == 0
    assert classify(b">From x Fri Jul  8 12:08:34 2011") == 0
