"""Bodies, attachments, defects and broken input: what parse_message reads out of the MIME tree."""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime

import pytest

from mailvault.parse import ParsedMessage, parse_message
from mailvault.parse import message as message_module
from mailvault.parse.html_text import html_to_text
from mailvault.parse.mime import parse_bytes, payload_bytes, walk

INGEST = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
HEAD = b"Date: Mon, 1 Apr 2024 10:00:00 +0000\r\nSubject: test\r\nMIME-Version: 1.0\r\n"


def parse(raw: bytes) -> ParsedMessage:
    return parse_message(raw, hashlib.sha256(raw).hexdigest(), ingest_time=INGEST)


def multipart(subtype: str, *parts: bytes, close: bool = True, head: bytes = HEAD) -> bytes:
    body = b"".join(b"--BOUND\r\n" + part + b"\r\n" for part in parts)
    if close:
        body += b"--BOUND--\r\n"
    return head + b'Content-Type: multipart/%s; boundary="BOUND"\r\n\r\n' % subtype.encode() + body


def pdf_file(objects: list[bytes]) -> bytes:
    """A PDF file of ``objects`` (numbered from 1, the first the catalog), with its xref table."""
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def tiny_pdf(text: str) -> bytes:
    """A minimal one-page PDF showing ``text`` in Helvetica, with a correct xref table."""
    stream = f"BT /F1 24 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    return pdf_file(objects)


# -- HTML ---------------------------------------------------------------------------------------
HTML = (
    "<html><head><title>Newsletter</title><style>p { color: stylesheetword }</style>"
    "<script>var scriptword = 1;</script></head><body>"
    '<p title="attributeword">Caf&eacute; &amp; cr&egrave;me &#8364;5 &lt;tag&gt;</p>'
    "<zorblaxtag>inside</zorblaxtag><div>second<br>line</div>"
    '<a href="https://hrefword.example/">link text</a><img alt="altword" src="x.png">'
    "</body></html>"
)


def test_html_to_text() -> None:
    text = html_to_text(HTML)
    assert "Café & crème €5 <tag>" in text
    assert "second\nline" in text
    assert "link text" in text and "inside" in text and "Newsletter" in text
    for word in ("stylesheetword", "scriptword", "attributeword", "zorblaxtag", "hrefword"):
        assert word not in text
    assert "altword" not in text


def test_html_to_text_survives_garbage() -> None:
    assert html_to_text("<<<>>><div <p unclosed='x>text") is not None
    assert html_to_text("<script>never closed") == ""


def test_html_only_message() -> None:
    raw = HEAD + b"Content-Type: text/html; charset=utf-8\r\n\r\n" + HTML.encode()
    parsed = parse(raw)
    assert "Café & crème" in parsed.body_text
    assert "zorblaxtag" not in parsed.body_text
    assert parsed.attachments == ()


def test_alternative_keeps_plain_and_adds_words_only_in_html() -> None:
    raw = multipart(
        "alternative",
        b"Content-Type: text/plain\r\n\r\nHello plain world\r\nsecond line",
        b"Content-Type: text/html\r\n\r\n<p>Hello plain world</p><p>htmlonlyword here</p>"
        b"<zorblaxtag>x</zorblaxtag>",
    )
    body = parse(raw).body_text
    assert body.count("Hello plain world") == 1
    assert "htmlonlyword here" in body
    assert "second line" in body
    assert "zorblaxtag" not in body


def test_alternative_with_empty_plain_uses_html() -> None:
    raw = multipart(
        "alternative",
        b"Content-Type: text/plain\r\n\r\n",
        b"Content-Type: text/html\r\n\r\n<p>only in html</p>",
    )
    assert parse(raw).body_text == "only in html"


# -- nested messages and attachments ------------------------------------------------------------
def test_nested_message_rfc822() -> None:
    inner = (
        b"From: Inner Sender <Inner@Example.org>\r\nSubject: =?utf-8?q?Weitergeleitet_=C3=BC?=\r\n"
        b"Date: Sun, 31 Mar 2024 09:00:00 +0000\r\n"
        b'Content-Type: multipart/mixed; boundary="IN"\r\n\r\n'
        b"--IN\r\nContent-Type: text/plain\r\n\r\ninnerbodyword\r\n"
        b"--IN\r\nContent-Type: text/plain; name=notes.txt\r\n"
        b"Content-Disposition: attachment; filename=notes.txt\r\n\r\ninnerattachmentword\r\n"
        b"--IN--\r\n"
    )
    raw = multipart(
        "mixed",
        b"Content-Type: text/plain\r\n\r\nouter body",
        b"Content-Type: message/rfc822\r\nContent-Disposition: attachment; filename=fwd.eml"
        b"\r\n\r\n" + inner,
    )
    parsed = parse(raw)
    assert "outer body" in parsed.body_text
    assert "Subject: Weitergeleitet ü" in parsed.body_text
    assert "From: Inner Sender <Inner@Example.org>" in parsed.body_text
    assert "innerbodyword" in parsed.body_text
    assert "innerattachmentword" not in parsed.body_text
    by_name = {a.filename: a for a in parsed.attachments}
    assert by_name["fwd.eml"].content_type == "message/rfc822"
    assert by_name["notes.txt"].text == "innerattachmentword"
    # indexes are positions in a depth-first walk: 0 root, 1 text, 2 rfc822, 3 inner root,
    # 4 inner text, 5 inner attachment
    assert by_name["fwd.eml"].index == 2
    assert by_name["notes.txt"].index == 5
    # an attached message is measured as it is stored, not as the parser writes it out again
    assert by_name["fwd.eml"].size == len(inner)
    assert by_name["fwd.eml"].sha256 == hashlib.sha256(inner).hexdigest()
    assert parsed.subject == "test"


def test_an_attached_message_nested_too_deep_to_measure_says_so() -> None:
    """An attached message nesting 300 more was listed as 0 bytes with the sha256 of nothing,
    and no word why (writing it out exceeds the recursion limit): now a defect says its size
    and sha256 are not known."""
    inner = b"From: x@b.c\r\nSubject: innermost\r\n\r\ninnermost\r\n"
    for level in range(300):
        inner = b"From: l%d@b.c\r\nContent-Type: message/rfc822\r\n\r\n" % level + inner
    raw = multipart(
        "mixed",
        b"Content-Type: message/rfc822\r\nContent-Disposition: attachment; filename=fwd.eml"
        b"\r\n\r\n" + inner,
    )
    parsed = parse(raw)
    assert [a.filename for a in parsed.attachments] == ["fwd.eml"]
    assert "attachment: part 1 size and sha256 not known (RecursionError)" in parsed.defects
    assert "innermost" in parsed.body_text
    assert not parsed.unreadable


def test_part_numbering_matches_message_walk() -> None:
    raw = multipart(
        "mixed",
        b"Content-Type: text/plain\r\n\r\nx",
        b"Content-Type: message/rfc822\r\n\r\nSubject: in\r\n\r\ny",
        b'Content-Type: multipart/alternative; boundary="A"\r\n\r\n--A\r\n\r\na\r\n--A--',
    )
    msg = parse_bytes(raw)
    assert [part for _, _, part in walk(msg)] == list(msg.walk())
    assert [index for index, _, _ in walk(msg)] == list(range(len(list(msg.walk()))))


def test_pdf_attachment_text_is_extracted() -> None:
    import base64

    pdf = tiny_pdf("quetzalpdfword in a report")
    raw = multipart(
        "mixed",
        b"Content-Type: text/plain\r\n\r\nsee attached",
        b"Content-Type: application/pdf; name=report.pdf\r\nContent-Transfer-Encoding: base64\r\n"
        b"Content-Disposition: attachment; filename=report.pdf\r\n\r\n"
        + base64.encodebytes(pdf).replace(b"\n", b"\r\n"),
    )
    parsed = parse(raw)
    (attachment,) = parsed.attachments
    assert attachment.filename == "report.pdf"
    assert attachment.content_type == "application/pdf"
    assert attachment.size == len(pdf)
    assert attachment.sha256 == hashlib.sha256(pdf).hexdigest()
    assert "quetzalpdfword" in attachment.text
    assert "quetzalpdfword" not in parsed.body_text
    # the same bytes come back for `show --part N`
    part = dict((i, p) for i, _, p in walk(parse_bytes(raw)))[attachment.index]
    assert payload_bytes(part) == pdf


def test_broken_pdf_gives_no_text_and_no_error() -> None:
    raw = multipart(
        "mixed",
        b"Content-Type: application/pdf; name=x.pdf\r\n\r\n%PDF-1.4\r\ngarbage",
    )
    (attachment,) = parse(raw).attachments
    assert attachment.text == ""


def flate_pdf(pages: int, content: bytes) -> bytes:
    """A PDF of ``pages`` pages, each with its own FlateDecode copy of ``content``."""
    import zlib

    packed = zlib.compress(content, 9)
    kids = b" ".join(b"%d 0 R" % (4 + i) for i in range(pages))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [" + kids + b"] /Count %d >>" % pages,
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        *(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents %d 0 R "
            b"/Resources << /Font << /F1 3 0 R >> >> >>" % (4 + pages + i)
            for i in range(pages)
        ),
        *[
            b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(packed)
            + packed
            + b"\nendstream"
        ]
        * pages,
    ]
    return pdf_file(objects)


def _pdf_message(pdf: bytes) -> bytes:
    import base64

    return multipart(
        "mixed",
        b"Content-Type: text/plain\r\n\r\nbomb body",
        b"Content-Type: application/pdf; name=b.pdf\r\nContent-Transfer-Encoding: base64\r\n"
        b"Content-Disposition: attachment; filename=b.pdf\r\n\r\n"
        + base64.encodebytes(pdf).replace(b"\n", b"\r\n"),
    )


def test_a_pdf_inflating_beyond_the_cap_is_skipped_with_a_defect() -> None:
    """A 175 KB PDF whose content stream inflated to 70 MB took 293 MB to import and its text
    was dropped with no word.  The stream is not inflated past 16 MiB, and a defect says the
    attachment's text was not extracted."""
    content = b"BT /F1 12 Tf 10 10 Td (pdfbombword) Tj ET\n" + b" " * 40_000_000
    parsed = parse(_pdf_message(flate_pdf(1, content)))
    (attachment,) = parsed.attachments
    assert attachment.filename == "b.pdf" and attachment.text == ""
    assert (
        "attachment: part 2 text not extracted: a stream of it inflates beyond 16 MiB"
        in parsed.defects
    )
    assert "bomb body" in parsed.body_text


def test_pdf_pages_past_the_cache_cap_are_read_from_the_file_opened_anew(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pypdf keeps what every page inflated: 50 pages just under the stream cap held 200 MB.
    Past MAX_CACHED_BYTES the file is opened anew, and every page's text still comes out."""
    import pypdf

    from mailvault.parse import pdf_text

    opened: list[int] = []
    reader = pypdf.PdfReader

    def counted(*args: object, **kwargs: object) -> pypdf.PdfReader:
        opened.append(1)
        return reader(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pypdf, "PdfReader", counted)
    monkeypatch.setattr(pdf_text, "MAX_CACHED_BYTES", 1_000_000)
    content = b"BT /F1 12 Tf 10 10 Td (pageword) Tj ET\n" + b" " * 600_000
    extracted = pdf_text.pdf_text(flate_pdf(6, content))
    assert extracted.text.split() == ["pageword"] * 6 and extracted.limit == ""
    assert len(opened) == 3  # after pages 2 and 4, each past 1 MB


def test_inline_non_text_leaf_is_an_attachment() -> None:
    raw = multipart(
        "related",
        b"Content-Type: text/html\r\n\r\n<p>hi</p>",
        b"Content-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=",
    )
    parsed = parse(raw)
    (image,) = parsed.attachments
    assert (image.index, image.filename, image.content_type, image.size) == (2, "", "image/png", 8)
    assert parsed.body_text == "hi"


def test_text_attachment_text_is_capped() -> None:
    raw = multipart(
        "mixed",
        b"Content-Type: text/plain\r\n\r\nbody",
        b"Content-Type: text/csv\r\nContent-Disposition: attachment; filename=big.csv\r\n\r\n"
        + b"word," * 60_000,
    )
    parsed = parse(raw)
    (attachment,) = parsed.attachments
    assert len(attachment.text) == 100_000
    assert attachment.size == 300_000
    # a search missing words past the cap has a reason on record
    assert "attachment: part 2 text cut short: only its first 100,000 characters are read" in (
        parsed.defects
    )


def test_attachment_text_past_the_message_cap_is_a_defect(monkeypatch: pytest.MonkeyPatch) -> None:
    """The text of a message's attachments together is capped; a search missing words of an
    attachment past the cap has a reason on record, as for the other caps."""
    from mailvault.parse import content

    monkeypatch.setattr(content, "MAX_ATTACHMENTS_TEXT_CHARS", 10)
    attached = [
        b"Content-Type: text/plain\r\nContent-Disposition: attachment; filename=%d.txt\r\n\r\n"
        b"word%d word word\r\n" % (n, n)
        for n in (1, 2, 3)
    ]
    parsed = parse(multipart("mixed", b"Content-Type: text/plain\r\n\r\nbody", *attached))
    assert [a.text for a in parsed.attachments] == ["word1 word", "", ""]
    assert [d.split(":")[1].strip() for d in parsed.defects if "attachments gave" in d] == [
        "part 2 text cut short",
        "part 3 text not extracted",
        "part 4 text not extracted",
    ]


def test_delivery_status_fields_are_text() -> None:
    raw = multipart(
        "report",
        b"Content-Type: text/plain\r\n\r\nDelivery failed",
        b"Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.com\r\n"
        b"\r\nFinal-Recipient: rfc822; gone@example.com\r\nStatus: 5.1.1\r\n",
    )
    body = parse(raw).body_text
    assert "Final-Recipient: rfc822; gone@example.com" in body
    assert "Status: 5.1.1" in body


# -- defects ------------------------------------------------------------------------------------
def test_bad_base64_is_a_defect() -> None:
    raw = multipart(
        "mixed",
        b"Content-Type: text/plain\r\n\r\nbody",
        b"Content-Type: application/octet-stream; name=a.bin\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nAAE*C",
        b"Content-Type: application/octet-stream; name=b.bin\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nQUJDRA",
    )
    parsed = parse(raw)
    assert "InvalidBase64CharactersDefect" in parsed.defects
    assert "InvalidBase64PaddingDefect" in parsed.defects
    assert [a.size for a in parsed.attachments] == [3, 4]
    assert parsed.unreadable is False


def test_missing_end_boundary_is_truncation() -> None:
    raw = multipart("mixed", b"Content-Type: text/plain\r\n\r\nfirst part", close=False)
    parsed = parse(raw)
    assert "CloseBoundaryNotFoundDefect" in parsed.defects
    assert "mime: truncated (multipart boundary never closed)" in parsed.defects
    assert "first part" in parsed.body_text


def test_missing_start_boundary() -> None:
    raw = HEAD + b'Content-Type: multipart/mixed; boundary="NOPE"\r\n\r\njust text\r\n'
    parsed = parse(raw)
    assert "StartBoundaryNotFoundDefect" in parsed.defects
    assert "just text" in parsed.body_text


def test_byte_level_defects() -> None:
    parsed = parse(b"Subject: caf\xc3\xa9\nDate: Mon, 1 Apr 2024 10:00:00 +0000\n\nnul\x00here\r\n")
    assert "bytes: bare LF line endings" in parsed.defects
    assert "bytes: NUL" in parsed.defects
    assert "header: 8-bit bytes" in parsed.defects
    clean = parse(HEAD + b"Content-Type: text/plain\r\n\r\nclean\r\n")
    assert clean.defects == ()


def test_obsolete_space_before_colon_is_repaired() -> None:
    parsed = parse(b"Subject   : old syntax\r\nFrom : A <a@example.com>\r\n\r\nbody\r\n")
    assert parsed.subject == "old syntax"
    assert parsed.from_[0].addr == "a@example.com"
    assert "header: obsolete space before a colon" in parsed.defects
    assert parsed.unreadable is False


def test_leading_junk_is_skipped() -> None:
    parsed = parse(b" " * 255 + b"\r\nSubject: after junk\r\n\r\nbody\r\n")
    assert parsed.subject == "after junk"
    assert "header: blank lines or BOM before the first header" in parsed.defects


# -- inputs that are barely mail ----------------------------------------------------------------
@pytest.mark.parametrize(
    "raw",
    [
        b"",
        os.urandom(4096),
        bytes(range(256)) * 20,
        b"\x00" * 100,
        b"// Not an RFC-822 Document\r\nat all\r\n",
        b"\r\n\r\n\r\n",
        b"=?utf-8?b?" * 1000,
        b"Content-Type: multipart/mixed; boundary=x\r\n\r\n" + b"--x\r\n" * 500,
    ],
)
def test_garbage_still_returns_a_message(raw: bytes) -> None:
    parsed = parse(raw)
    assert isinstance(parsed, ParsedMessage)
    assert parsed.size == len(raw)
    assert parsed.date is not None


def test_empty_and_random_input_are_unreadable() -> None:
    assert parse(b"").unreadable is True
    junk = parse(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR binary junk")
    assert junk.unreadable is True
    assert "junk" in junk.body_text


def test_headers_only_message_is_readable() -> None:
    parsed = parse(b"Subject: only headers\r\nFrom: a@example.com\r\n")
    assert parsed.unreadable is False
    assert parsed.subject == "only headers"
    assert parsed.body_text == ""
    assert "header: no blank line before the body" in parsed.defects


def test_empty_header_block_with_body_is_readable() -> None:
    parsed = parse(b"\r\nno headers, only a body\r\n")
    assert parsed.unreadable is False
    assert parsed.body_text == "no headers, only a body"


def test_parser_crash_falls_back_to_a_header_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(raw: bytes) -> None:
        raise RecursionError("too deep")

    monkeypatch.setattr(message_module, "parse_tree", explode)
    parsed = parse(
        b"From: Alice <ALICE@example.com>\r\nSubject: =?utf-8?q?r=C3=A9sum=C3=A9?=\r\n"
        b"Date: Mon, 1 Apr 2024 10:00:00 +0000\r\n\r\nthe body\r\n"
    )
    assert parsed.unreadable is True
    assert parsed.subject == "résumé"
    assert parsed.from_[0].addr == "alice@example.com"
    assert parsed.date == datetime(2024, 4, 1, 10, 0, tzinfo=UTC)
    assert parsed.body_text == "the body\n"
    assert parsed.defects[0] == "unreadable: RecursionError: too deep"


def test_even_the_fallback_failing_returns_a_message(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(*args: object) -> None:
        raise MemoryError

    monkeypatch.setattr(message_module, "parse_tree", explode)
    monkeypatch.setattr(message_module, "_build", explode)
    parsed = parse(b"Subject: x\r\n\r\ny")
    assert parsed.unreadable is True
    assert parsed.date == INGEST and parsed.date_fallback is True
