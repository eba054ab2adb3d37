"""The cheaper boundary test given to email.feedparser matches exactly what its regex matches."""

from __future__ import annotations

import email.feedparser
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from mailvault.parse import _boundary, parse_message  # noqa: F401 - importing installs it

SUFFIX = r")(?P<end>--)?(?P<ws>[ \t]*)(?P<linesep>\r\n|\r|\n)?$"


def feedparser_pattern(separator: str) -> str:
    """The pattern feedparser builds (Lib/email/feedparser.py, _parsegen)."""
    return "(?P<sep>" + re.escape(separator) + SUFFIX


BOUNDARY_CHARS = st.sampled_from(list("ab=_-.+()[]*?\\$^|{} \t'\":/,Z9"))
LINE_PIECES = st.sampled_from(["--", "-", " ", "\t", "\r\n", "\n", "\r", "x", "=", "--a", "b"])


@settings(max_examples=600)
@given(st.lists(BOUNDARY_CHARS, min_size=1, max_size=12).map("".join), st.data())
def test_the_matcher_agrees_with_the_regex(boundary: str, data: st.DataObject) -> None:
    separator = "--" + boundary
    pattern = feedparser_pattern(separator)
    fast = _boundary.compile_pattern(pattern)
    assert isinstance(fast, _boundary.BoundaryMatcher)
    slow = re.compile(pattern)
    for _ in range(8):
        prefix = data.draw(st.sampled_from(["", separator, separator[:-1], "x" + separator]))
        line = prefix + data.draw(st.lists(LINE_PIECES, max_size=5).map("".join))
        want, got = slow.match(line), fast.match(line)
        assert (want is None) == (got is None), line
        if want is not None and got is not None:
            assert got.groupdict() == want.groupdict() and got.span() == want.span()
            assert got.group("sep") == want.group("sep") == separator


def test_other_patterns_get_the_real_compile() -> None:
    assert isinstance(_boundary.compile_pattern(r"(\r\n|\r|\n)\Z"), re.Pattern)
    assert isinstance(_boundary.compile_pattern(feedparser_pattern("--a"), re.I), re.Pattern)
    tampered = "(?P<sep>--a.b" + SUFFIX  # an unescaped ".": not what feedparser builds
    assert isinstance(_boundary.compile_pattern(tampered), re.Pattern)


def test_feedparser_uses_it_and_parses_as_before() -> None:
    assert email.feedparser.re.compile is _boundary.compile_pattern
    raw = (
        b'Content-Type: multipart/mixed; boundary="a.b+c(d)"\r\n\r\npreamble\r\n'
        b"--a.b+c(d)\r\nContent-Type: text/plain\r\n\r\none\r\n"
        b"--a.b+c(d)  \r\nContent-Type: text/plain\r\n\r\ntwo\r\n--a.b+c(d)--\r\nepilogue\r\n"
    )
    fast = email.message_from_bytes(raw)
    real = email.feedparser.re
    email.feedparser.re = re
    try:
        slow = email.message_from_bytes(raw)
    finally:
        email.feedparser.re = real
    assert fast.as_bytes() == slow.as_bytes()
    assert [p.get_payload() for p in fast.walk()][1:] == [p.get_payload() for p in slow.walk()][1:]
    assert fast.preamble == slow.preamble == "preamble" and fast.epilogue == slow.epilogue
