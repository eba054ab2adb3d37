"""Golden tests of header decoding: encoded words, RFC 2231, broken charsets, dates, addresses."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime
from email.utils import getaddresses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailvault.parse import Address, ParsedMessage, headers, parse_message
from mailvault.parse.charset import decode_text
from mailvault.parse.encoded_words import header_text
from mailvault.parse.params import header_params

INGEST = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def parse(raw: bytes) -> ParsedMessage:
    return parse_message(raw, "0" * 64, ingest_time=INGEST)


def mail(*headers: str, body: str = "hello\r\n", extra: bytes = b"") -> bytes:
    """A CRLF message with a Date and the given header lines."""
    lines = ["Date: Mon, 1 Apr 2024 10:00:00 +0200", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode("utf-8") + extra


def b_word(text: str, charset: str) -> str:
    return f"=?{charset}?B?{base64.b64encode(text.encode(charset)).decode()}?="


# -- RFC 2047 encoded words ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("=?utf-8?q?caf=C3=A9_cr=C3=A8me?=", "café crème"),
        ("=?UTF-8?B?w6l0w6kgw6AgUGFyaXM=?=", "été à Paris"),
        ("=?iso-8859-1?q?Andr=E9?= Pirard", "André Pirard"),
        ("=?ISO-8859-1?B?SWYgeW91IGNhbiByZWFkIHRoaXMgeW8=?=", "If you can read this yo"),
        (b_word("Привет, мир", "koi8-r"), "Привет, мир"),
        (b_word("日本語の件名", "iso-2022-jp"), "日本語の件名"),
        # adjacent encoded words: the whitespace between them is not text
        ("=?utf-8?q?one?= =?utf-8?q?two?=", "onetwo"),
        ("=?utf-8?q?one?=\r\n =?utf-8?q?_two?=", "one two"),
        ("=?utf-8?q?a?==?utf-8?q?b?=", "ab"),
        # a multi-byte character split across two encoded words
        ("=?utf-8?q?caf=C3?= =?utf-8?q?=A9?=", "café"),
        ("plain =?utf-8?q?=E2=82=AC?= text", "plain € text"),
        # language suffix (RFC 2231 section 5) and lower-case encoding letter
        ("=?utf-8*en?b?aGVsbG8=?=", "hello"),
        # unknown charset: best effort, never an exception
        ("=?x-unknown?q?caf=C3=A9?=", "café"),
        ("=?x-unknown?q?caf=E9?=", "café"),
        # missing padding is tolerated
        ("=?utf-8?b?w6k?=", "é"),
    ],
)
def test_encoded_words(raw: str, expected: str) -> None:
    assert header_text(raw) == expected


def test_subject_in_message_is_decoded_and_unfolded() -> None:
    raw = mail("Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n =?utf-8?q?_aus_K=C3=B6ln?=")
    assert parse(raw).subject == "Grüße aus Köln"


def test_broken_encoded_word_keeps_the_text() -> None:
    parsed = parse(mail("Subject: =?utf-8?q?unterminated and more"))
    assert parsed.subject == "=?utf-8?q?unterminated and more"


# -- RFC 2231 parameters ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "key", "expected"),
    [
        ("attachment; filename*=utf-8''%E2%82%AC%20rates.txt", "filename", "€ rates.txt"),
        ("attachment; filename*=iso-8859-1'fr'r%E9sum%E9.pdf", "filename", "résumé.pdf"),
        (
            "attachment; filename*0*=utf-8''na%C3%AFve%20; filename*1*=r%C3%A9sum%C3%A9.pdf",
            "filename",
            "naïve résumé.pdf",
        ),
        ('attachment; filename*0="long "; filename*1="name.txt"', "filename", "long name.txt"),
        ('text/plain; name="=?utf-8?B?w6l0w6kudHh0?="', "name", "été.txt"),
        ('text/plain; charset="ISO-8859-1"; format=flowed', "charset", "ISO-8859-1"),
        ("attachment; filename*=x-bogus''caf%C3%A9.txt", "filename", "café.txt"),
        ('attachment; filename="a \\"quoted\\" name.txt"', "filename", 'a "quoted" name.txt'),
        ('attachment; filename="C:\\Users\\a\\report.pdf"', "filename", "C:\\Users\\a\\report.pdf"),
        ('attachment; filename="back\\\\slash.txt"', "filename", "back\\slash.txt"),
    ],
)
def test_rfc2231_params(raw: str, key: str, expected: str) -> None:
    assert header_params(raw)[key] == expected


def test_rfc2231_filename_on_an_attachment() -> None:
    raw = (
        b"Date: Mon, 1 Apr 2024 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n'
        b"--B\r\nContent-Type: text/plain\r\n\r\nbody\r\n"
        b"--B\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Disposition: attachment;\r\n filename*0*=utf-8''%C3%BCber;\r\n"
        b" filename*1*=%20blick.bin\r\nContent-Transfer-Encoding: base64\r\n\r\nAAEC\r\n"
        b"--B--\r\n"
    )
    (attachment,) = parse(raw).attachments
    assert attachment.filename == "über blick.bin"
    assert attachment.size == 3
    assert attachment.content_type == "application/octet-stream"


RUSSIAN = (
    "У меня большая семья из шести человек: я, мама, папа, старшая сестра, бабушка и дедушка. "
    "Мы живем все вместе с собакой и кошкой в большом доме в деревне."
)
JAPANESE = "メールを簡単に。メッセージの高速全文検索、タブ表示、アーカイブ。設定も簡単です。"


# -- body charsets ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "label", "expected"),
    [
        # windows-1252 curly quotes sent as iso-8859-1 (0x93/0x94 are C1 controls in latin-1)
        (b"\x93quoted\x94 \x96 caf\xe9", "iso-8859-1", "\u201cquoted\u201d \u2013 café"),
        (b"\x93quoted\x94", "us-ascii", "\u201cquoted\u201d"),
        (b"caf\xe9", "iso-8859-1", "café"),
        # UTF-8 sent as us-ascii or latin-1
        ("café".encode(), "us-ascii", "café"),
        ("café".encode(), "iso-8859-1", "café"),
        # unknown or missing charset: UTF-8, else windows-1252
        ("naïve".encode(), "x-unknown", "naïve"),
        ("naïve".encode(), None, "naïve"),
        (b"na\xefve", "x-unknown", "naïve"),
        (b"na\xefve", None, "naïve"),
        (b"na\xefve", '"bad-charset"', "naïve"),
        # labels Python does not know directly, and supersets
        ("Привет".encode("koi8-r"), "KOI8-R", "Привет"),
        ("中文".encode("gbk"), "gb2312", "中文"),
        ("한국어".encode("cp949"), "ks_c_5601-1987", "한국어"),
        ("שלום".encode("iso8859-8"), "iso-8859-8-i", "שלום"),
        ("日本".encode("iso-2022-jp"), "iso-2022-jp", "日本"),
        # UTF-8 with one stray windows-1252 byte keeps the UTF-8
        ("é".encode() + b" \x80", "utf-8", "é €"),
        # undefined cp1252 bytes survive as their latin-1 code points
        (b"\x81\x8d", None, "\x81\x8d"),
        # undeclared or mislabelled non-Western text (a paragraph or more): detected
        (RUSSIAN.encode("koi8-r"), None, RUSSIAN),
        (RUSSIAN.encode("cp1251"), "us-ascii", RUSSIAN),
        (JAPANESE.encode("cp932"), "utf-8", JAPANESE),
        # codecs that are not charsets are refused, not run
        (b"aGVsbG8=", "base64", "aGVsbG8="),
        (b"abc", "undefined", "abc"),
    ],
)
def test_decode_text(data: bytes, label: str | None, expected: str) -> None:
    assert decode_text(data, label) == expected


def test_mislabelled_body_in_a_message() -> None:
    raw = mail("Content-Type: text/plain; charset=iso-8859-1", body="") + b"\x93smart\x94\r\n"
    assert parse(raw).body_text == "\u201csmart\u201d"


def test_missing_charset_with_utf8_body() -> None:
    raw = mail("Content-Type: text/plain", body="Grüße\r\n")
    assert parse(raw).body_text == "Grüße"


def test_unknown_charset_body() -> None:
    raw = mail("Content-Type: text/plain; charset=x-unknown", body="") + b"caf\xe9\r\n"
    assert parse(raw).body_text == "café"


# -- raw 8-bit headers --------------------------------------------------------------------------
def test_raw_utf8_header() -> None:
    parsed = parse(mail("Subject: Grüße", "From: Jürgen <J@Example.org>"))
    assert parsed.subject == "Grüße"
    assert parsed.from_ == (Address("Jürgen", "j@example.org"),)
    assert "header: 8-bit bytes" in parsed.defects


def test_raw_latin1_header() -> None:
    raw = b"Date: Mon, 1 Apr 2024 10:00:00 +0000\r\nSubject: caf\xe9 \x93x\x94\r\n\r\nbody\r\n"
    parsed = parse(raw)
    assert parsed.subject == "café \u201cx\u201d"
    assert "header: 8-bit bytes" in parsed.defects


# -- dates --------------------------------------------------------------------------------------
def test_date_converted_to_utc_and_raw_kept() -> None:
    parsed = parse(mail())
    assert parsed.date == datetime(2024, 4, 1, 8, 0, tzinfo=UTC)
    assert parsed.date_raw == "Mon, 1 Apr 2024 10:00:00 +0200"
    assert parsed.date_fallback is False
    assert not [d for d in parsed.defects if d.startswith("date")]


def test_date_with_unknown_zone_is_utc() -> None:
    parsed = parse(b"Date: Mon, 1 Apr 2024 10:00:00 -0000\r\n\r\nx\r\n")
    assert parsed.date == datetime(2024, 4, 1, 10, 0, tzinfo=UTC)


def test_missing_date_falls_back_to_ingest_time() -> None:
    parsed = parse(b"Subject: no date\r\n\r\nbody\r\n")
    assert parsed.date == INGEST
    assert parsed.date_fallback is True
    assert parsed.date_raw == ""
    assert "date: missing" in parsed.defects


@pytest.mark.parametrize("value", ["yesterday", "Mon, 32 Foo 2024 99:99:99 +0000", "0"])
def test_bad_date_falls_back_and_keeps_raw(value: str) -> None:
    parsed = parse(f"Date: {value}\r\nSubject: x\r\n\r\nbody\r\n".encode())
    assert parsed.date == INGEST
    assert parsed.date_fallback is True
    assert parsed.date_raw == value
    assert "date: unparsable" in parsed.defects


def test_naive_ingest_time_is_taken_as_utc() -> None:
    parsed = parse_message(b"Subject: x\r\n\r\n", "0" * 64, ingest_time=datetime(2026, 1, 1))
    assert parsed.date == datetime(2026, 1, 1, tzinfo=UTC)


# -- addresses ----------------------------------------------------------------------------------
def test_addresses_lower_cased_names_kept() -> None:
    parsed = parse(
        mail(
            'From: "Doe, Jane" <Jane.Doe@Example.COM>',
            "To: Bob <BOB@example.com>, carol@EXAMPLE.com",
            "To: =?utf-8?q?Ren=C3=A9e?= <Renee@example.fr>",
            "Cc: =?utf-8?q?M=C3=BCller=2C_Hans?= <HANS@example.de>",
            "Bcc: undisclosed-recipients:;",
            "Reply-To: Lists <list@example.net>",
            "Sender: bounce@Example.net",
        )
    )
    assert parsed.from_ == (Address("Doe, Jane", "jane.doe@example.com"),)
    assert parsed.to == (
        Address("Bob", "bob@example.com"),
        Address("", "carol@example.com"),
        Address("Renée", "renee@example.fr"),
    )
    assert parsed.cc == (Address("Müller, Hans", "hans@example.de"),)
    assert parsed.bcc == ()
    assert parsed.reply_to == (Address("Lists", "list@example.net"),)
    assert parsed.sender == (Address("", "bounce@example.net"),)


def test_encoded_word_in_place_of_a_mailbox() -> None:
    parsed = parse(mail("From: =?utf-8?q?Just_a_name?="))
    assert parsed.from_ == (Address("Just a name", ""),)


# -- identifiers and threads --------------------------------------------------------------------
def test_ids_and_thread_from_references() -> None:
    parsed = parse(
        mail(
            "Message-ID: <c@example.com>",
            "In-Reply-To: <b@example.com>",
            "References: <a@example.com>\r\n <b@example.com>",
            "List-Id: Dev list <dev.example.org>",
        )
    )
    assert parsed.message_id == "c@example.com"
    assert parsed.in_reply_to == "b@example.com"
    assert parsed.references == ("a@example.com", "b@example.com")
    assert parsed.thread_id == "a@example.com"
    assert parsed.list_id == "dev.example.org"


def test_thread_from_in_reply_to_then_own_id() -> None:
    reply = parse(mail("Message-ID: <c@x>", "In-Reply-To: Your message <b@x>"))
    assert reply.thread_id == "b@x"
    root = parse(mail("Message-ID: no-brackets@x"))
    assert root.message_id == "no-brackets@x"
    assert root.thread_id == "no-brackets@x"
    assert parse(mail()).thread_id == ""


def test_message_ids_with_spaces_are_kept_whole() -> None:
    """<abc def@example.com> (broken mailers) was stored as "<abc": the id pattern refused
    whitespace and the fallback took the first word.  Whitespace inside the brackets is kept,
    each run (a fold included) as one space."""
    parsed = parse(
        mail(
            "Message-ID: < abc def@example.com >",
            "In-Reply-To: <par\tent\r\n  id@example.com>",
            "References: <root id@example.com> <par ent id@example.com>",
        )
    )
    assert parsed.message_id == "abc def@example.com"
    assert parsed.in_reply_to == "par ent id@example.com"
    assert parsed.references == ("root id@example.com", "par ent id@example.com")
    assert parsed.thread_id == "root id@example.com"


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        (
            "To",
            "Legal Team [EXT] <legal@corp.test>, Bob <bob@corp.test>",
            [("Legal Team [EXT]", "legal@corp.test"), ("Bob", "bob@corp.test")],
        ),
        ("Cc", "Ops [on-call] <OPS@corp.test>", [("Ops [on-call]", "ops@corp.test")]),
        ("From", "Boss [Legal] <boss@example.com>", [("Boss [Legal]", "boss@example.com")]),
        ("From", "Evil \x1b[31mRED <evil@x.test>", [("Evil \x1b[31mRED", "evil@x.test")]),
    ],
)
def test_a_display_name_the_strict_parser_rejects_keeps_its_addresses(
    field: str, value: str, expected: list[tuple[str, str]]
) -> None:
    """Python's strict address parser returns nothing at all for a header with a "[EXT]" tag
    or a stray escape in a display name: the message then could not be found by sender or
    recipient, and a legal hold on that address would miss it."""
    raw = f"{field}: {value}\r\nSubject: s\r\n\r\nbody\r\n".encode()
    msg = parse_message(raw, "0" * 64, ingest_time=datetime(2024, 1, 1, tzinfo=UTC))
    got = {"To": msg.to, "Cc": msg.cc, "From": msg.from_}[field]
    assert [(a.name, a.addr) for a in got] == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('"ceo@bank.example":;', []),
        ("ceo@bank.example:;", []),
        ("ceo@bank.example [x]: attacker@evil.example;", [("", "attacker@evil.example")]),
        ("unlisted-recipients:; (no To-header on input)", []),
        ("(Empty list)(start)Undisclosed recipients  :(nobody(that I know))  ;", []),
        (
            'Team [EXT]: "a;b" <a@corp.test>, b@corp.test;',
            [("a;b", "a@corp.test"), ("", "b@corp.test")],
        ),
        ("bob@corp.test (Re: budget) [EXT]", [("Re: budget) [EXT]", "bob@corp.test")]),
    ],
)
def test_a_group_name_is_no_address_even_when_it_spells_one(
    value: str, expected: list[tuple[str, str]]
) -> None:
    """An empty group whose display name is an address ("ceo@bank.example":;) was read by the
    tolerant parser as the mailbox ceo@bank.example named ":", so from:ceo@bank.example found
    it.  A group's name is a name; an empty group has no mailbox; a comment is no mailbox."""
    raw = f"From: {value}\r\nSubject: s\r\n\r\nbody\r\n".encode()
    msg = parse_message(raw, "0" * 64, ingest_time=datetime(2024, 1, 1, tzinfo=UTC))
    assert [(a.name, a.addr) for a in msg.from_] == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('"ceo@bank.example"', [("ceo@bank.example", "")]),
        ('bob@corp.test, "ceo@bank.example"', [("", "bob@corp.test"), ("ceo@bank.example", "")]),
        ('"ceo@bank.example"@evil.example', [("", '"ceo@bank.example"@evil.example')]),
        ('"CEO@bank.example" <a@evil.example>', [("CEO@bank.example", "a@evil.example")]),
        # with a comment after it, which Python's parser takes for the name
        ('"ceo@bank.example" (CEO)', [("ceo@bank.example", "")]),
        ("ceo@bank.example (CEO)", [("CEO", "ceo@bank.example")]),  # a real addr-spec
    ],
)
def test_a_lone_quoted_string_is_a_name_not_an_address(
    value: str, expected: list[tuple[str, str]]
) -> None:
    """From: "ceo@bank.example" (a quoted string alone) was the address ceo@bank.example, as
    Python's parser reads it, so from:ceo@bank.example found it and it was listed as that
    sender.  A quoted string is no addr-spec: it is a name without an address."""
    raw = f"From: {value}\r\nSubject: s\r\n\r\nbody\r\n".encode()
    msg = parse_message(raw, "0" * 64, ingest_time=datetime(2024, 1, 1, tzinfo=UTC))
    assert [(a.name, a.addr) for a in msg.from_] == expected


def test_a_raw_utf8_file_name_cut_mid_character_stays_utf8() -> None:
    """A mailer truncated a long raw UTF-8 name in the middle of a character: the rest is still
    UTF-8 (so `attachment:картинка` finds it), not windows-1252 mojibake."""
    name = "Картинка с очень длинным именем".encode()[:-1]  # the last character cut short
    raw = (
        b"From: a@b.c\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n'
        b"\r\nhi\r\n--b\r\nContent-Type: image/png\r\n"
        b'Content-Disposition: attachment; filename="' + name + b'"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\naGk=\r\n--b--\r\n"
    )
    msg = parse_message(raw, "0" * 64, ingest_time=datetime(2024, 1, 1, tzinfo=UTC))
    assert [a.filename[:8] for a in msg.attachments] == ["Картинка"]
    assert decode_text("caf\xe9".encode("latin-1"), None) == "café"  # one byte: still 1252


def _lone_quoted_reference(text: str, name: str, addr: str) -> tuple[str, str]:
    """The rule as first written: one search of the whole header per mailbox."""
    if "@" not in addr:
        return name, addr
    quoted = r'(?:^|[\s,:;])"' + re.escape(addr) + r'"\s*(?:$|[,;(])'
    return (addr, "") if re.search(quoted, text) else (name, addr)


_ADDRESS_PIECES = ['"', "@", "a", "b", " ", "\t", ",", ";", ":", "(", ")", "<", ">", "\\", "x@y"]


@settings(max_examples=3000)
@given(st.lists(st.sampled_from([*_ADDRESS_PIECES, '"a@b"']), max_size=16).map("".join))
def test_the_one_scan_for_lone_quoted_strings_agrees_with_a_search_per_mailbox(text: str) -> None:
    try:
        parsed = getaddresses([text])
    except Exception:  # noqa: BLE001 - addresses() falls back the same way
        return
    quoted = headers._quoted_strings(text)
    for name, addr in parsed:
        assert headers._lone_quoted(quoted, name, addr) == _lone_quoted_reference(text, name, addr)


def test_a_header_of_20000_mailboxes_is_scanned_once_not_once_per_mailbox(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Looking for lone quoted strings searched the whole header once per mailbox: 10,000
    addresses in one To: took 50 s to import and 31 s per `show`.  The header is scanned once,
    and every mailbox of it still comes out, the lone quoted ones as names."""
    scans: list[int] = []
    scan = headers._quoted_strings

    def counted(text: str) -> frozenset[str]:
        scans.append(len(text))
        return scan(text)

    monkeypatch.setattr(headers, "_quoted_strings", counted)
    mailboxes = [
        f'"q{i}@bank.example"' if i % 1000 == 0 else f"user{i}@example.com" for i in range(20_000)
    ]
    raw = b"From: a@b.c\r\nTo: " + ", ".join(mailboxes).encode() + b"\r\nSubject: s\r\n\r\nbody\r\n"
    msg = parse_message(raw, "0" * 64, ingest_time=datetime(2024, 1, 1, tzinfo=UTC))
    assert len(msg.to) == 20_000
    assert msg.to[1] == Address(name="", addr="user1@example.com")
    assert [a.name for a in msg.to if not a.addr] == [
        f"q{i}@bank.example" for i in range(0, 20_000, 1000)
    ]
    assert len(scans) == 2  # From: and To:, each once
