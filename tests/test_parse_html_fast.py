"""The regex tokenizer of html_text gives exactly what html.parser gives, or stands aside."""

from __future__ import annotations

import email
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from mailvault.parse.html_text import _extract, _fast_feed, _TextExtractor
from tests.prereq import corpora_dir

PIECES = [
    "<p>", "</p>", "<P CLASS=x>", "<br/>", "<br />", "<br/ >", "<td>", "</td >", "<a href=x/>",
    "<a href=x />", '<a href="a>b">', "<a href='q'>", "<a b=c=d>", '<a x="1"y="2">', "<img src=x>",
    "<script>", "</script>", "<script/>", "<SCRIPT type=x>", "</ script>", "<style>", "</STYLE >",
    "<template>", "</template>", "<!-- c -->", "<!-->", "<!-- - -- >", "<!DOCTYPE html>",
    "<!doctype x", "<?xml v?>", "<![CDATA[x]]>", "<!x>", "</x y>", "</>", "< ", "<", "<1",
    "a < b", "&amp;", "&lt;", "&#65;", "&#x41;", "&nbsp;", "&", "&amp", "&#", "&zz;", "text",
    " ", "\n", "é", "<o:p>", "</o:p>", "<h1>", "</h1>", "<div\n class=\"z\">", ">", "'", '"', "/",
]  # fmt: skip


def reference(html: str) -> list[str]:
    return _extract(html, fast=False)


@settings(max_examples=1500)
@given(st.lists(st.sampled_from(PIECES), max_size=25).map("".join))
def test_the_fast_tokenizer_agrees_with_html_parser(html: str) -> None:
    parser = _TextExtractor()
    if _fast_feed(parser, html):
        assert parser.chunks == reference(html), html


def test_it_takes_the_common_mail_html() -> None:
    html = (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>T</title>'
        "<style>p {color: red}</style></head><body><div class=x><p>Hello &amp; welcome,"
        '<br/>see <a href="https://example.com/?a=1&b=2">the link</a>.</p><table><tr><td>1'
        "</td><td>2</td></tr></table><!-- tracking --><img src=x.png alt=''></div></body></html>"
    )
    parser = _TextExtractor()
    assert _fast_feed(parser, html)
    assert parser.chunks == reference(html)


def _html_parts(path: Path) -> list[str]:
    try:
        message = email.message_from_bytes(path.read_bytes())
    except Exception:  # noqa: BLE001 - the corpora are torture tests
        return []
    parts = []
    for part in message.walk():
        if part.get_content_type() == "text/html":
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                parts.append(payload.decode("utf-8", "replace"))  # the charset is not the point
    return parts


def test_every_html_part_of_the_corpora_comes_out_the_same() -> None:
    checked = 0
    for path in sorted(corpora_dir().rglob("*")):
        if not path.is_file() or path.stat().st_size > 2_000_000:
            continue
        for html in _html_parts(path):
            assert _extract(html) == reference(html), path
            checked += 1
    assert checked >= 50
