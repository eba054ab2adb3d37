"""HTML mail bodies to readable, searchable text.

Only character data becomes text: tag names, attribute values (links, alt text, styles) and the
contents of <script>/<style> never do, so a word that exists only inside markup is not findable.
Block elements become line breaks so snippets read like the message.  The stdlib parser is
used because it is forgiving with broken markup and adds no dependency; it never raises here.

``html.parser`` walks a document in Python, a few microseconds per tag, which made HTML parts
a quarter of the time spent parsing mail.  ``_fast_feed`` tokenizes with one regular expression
instead and calls the same handlers, for documents made only of constructs whose treatment by
``html.parser`` it reproduces exactly (well-formed tags and attributes, comments, doctypes,
processing instructions, ``script``/``style`` contents, a ``<`` that starts nothing); at the
first anything else it gives up and the document goes through ``html.parser`` as before.  The
tests check the two give the same text.
"""

from __future__ import annotations

import re
from html import unescape
from html.parser import HTMLParser

_SKIP = frozenset({"script", "style", "template", "xml"})
_BLOCK = frozenset(
    {
        "address", "article", "aside", "blockquote", "br", "caption", "dd", "div", "dl", "dt",
        "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6",
        "header", "hr", "li", "main", "nav", "ol", "p", "pre", "section", "table", "tbody",
        "td", "tfoot", "th", "thead", "title", "tr", "ul",
    }
)  # fmt: skip
_SPACES = re.compile(r"[ \t\r\f\v\u00a0]+")
_BLANK_LINES = re.compile(r"\n\s*\n\s*\n+")


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.chunks: list[str] = []
        self.skip_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP:
            self.skip_depth += 1
        elif tag in _BLOCK:
            self.chunks.append("\n")
        elif tag == "td" or tag == "th":
            self.chunks.append(" ")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _BLOCK:
            self.chunks.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self.skip_depth = max(0, self.skip_depth - 1)
        elif tag in _BLOCK:
            self.chunks.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skip_depth:
            self.chunks.append(data)


# What ``html.parser`` (Python 3.8-3.13, convert_charrefs=True) does with a "<" at each of these
# is reproduced by ``_fast_feed``: a start tag with plain attributes (its name as
# ``tagfind_tolerant`` reads it; "/>" makes it a start-end tag), an end tag as ``endtagfind``
# reads it, a comment up to the first ``--\s*>``, a doctype or processing instruction up to the
# next ">", and a "<" before anything that cannot start markup, which is text.
_TOKEN = re.compile(
    r"""<(?:
      (?P<name>[a-zA-Z][^\t\n\r\f />\x00]*)
        (?:\s+[^\s"'>/=<]+(?:\s*=\s*(?:"[^"]*"|'[^']*'|[^\s"'=<>`]+))?)*\s*(?P<close>/?)>
    | /\s*(?P<endname>[a-zA-Z][-.a-zA-Z0-9:_]*)\s*>
    | !--.*?--\s*>
    | ![dD][oO][cC][tT][yY][pP][eE][^>]*>
    | \?[^>]*>
    | (?P<lt>)(?![a-zA-Z/!?])
    )""",
    re.VERBOSE | re.DOTALL,
)
_CDATA_END = {tag: re.compile(rf"</\s*{tag}\s*>", re.IGNORECASE) for tag in ("script", "style")}


def _fast_feed(parser: _TextExtractor, html: str) -> bool:
    """Feed ``html`` to the handlers as ``html.parser`` would; False if it cannot (then the
    handlers may have been called: use a fresh parser)."""
    i, n = 0, len(html)
    while i < n:
        j = html.find("<", i)
        if j < 0:
            j = n
        if i < j:
            parser.handle_data(unescape(html[i:j]))
            i = j
            if i == n:
                break
        match = _TOKEN.match(html, i)
        if match is None:
            return False
        i = match.end()
        name = match.group("name")
        if name is not None:
            tag = name.lower()
            if match.group("close"):
                parser.handle_startendtag(tag, [])
                continue
            parser.handle_starttag(tag, [])
            if tag in _CDATA_END:  # raw text up to the end tag; without one, the rest is lost
                end = _CDATA_END[tag].search(html, i)
                if end is None:
                    return True
                parser.handle_data(html[i : end.start()])
                parser.handle_endtag(tag)
                i = end.end()
        elif match.group("endname") is not None:
            parser.handle_endtag(match.group("endname").lower())
        elif match.group("lt") is not None:
            parser.handle_data("<")
    return True


def _extract(html: str, *, fast: bool = True) -> list[str]:
    """The text chunks of ``html`` (``fast=False``: through ``html.parser`` only)."""
    if fast:
        parser = _TextExtractor()
        if _fast_feed(parser, html):
            return parser.chunks
    parser = _TextExtractor()
    try:
        parser.feed(html)
        parser.close()
    except Exception:  # html.parser is lenient, but a broken document must not cost the text
        pass
    return parser.chunks


def html_to_text(html: str) -> str:
    """Readable text of an HTML document or fragment; best effort, never raises."""
    text = "".join(_extract(html))
    lines = (_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()
