"""Printing hits: one line per hit on a terminal, ids, or JSON lines.

Everything printed from a message passes ``clean``: a hostile Subject must not be able to send
terminal escapes, bidi overrides or line breaks to the investigator's screen.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Iterable, Iterator

from mailvault._text import UNSAFE_RANGES, json_safe
from mailvault.search.engine import Hit, Results
from mailvault.search.query import iso_utc

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# C0/C1 controls, zero-width and bidi controls (what `show` masks too): each becomes a space
# (a translate table is cheaper to build at start-up than the equivalent regex).
CONTROL = dict.fromkeys(
    [code for first, last in UNSAFE_RANGES for code in range(first, last + 1)], " "
)
BOLD, RESET = "\033[1m", "\033[0m"


def clean(text: str) -> str:
    """No control characters (terminal escapes in a hostile Subject) and no line breaks."""
    return text if text.isprintable() else text.translate(CONTROL)  # every CONTROL is not


def _fit(text: str, width: int) -> str:
    text = " ".join(clean(text).split())
    used = _width(text)
    if used <= width:
        return text + " " * (width - used)
    out, used = "", 0
    for ch in text:
        w = 2 if unicodedata.east_asian_width(ch) in "WF" else 1
        if used + w > width - 1:
            break
        out += ch
        used += w
    return out + "…" + " " * (width - used - 1)


def _width(text: str) -> int:
    if text.isascii() or max(text) < "\u1100":  # no assigned wide character below U+1100
        return len(text)
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


# "@" and its full-width and small look-alikes
AT_SIGNS = ("@", "\uff20", "\ufe6b")


def sender(value: str) -> str:
    """The sender column: the display name of a stored ``"Name" <addr>``, or the address when
    there is no name or the name holds an @ (``"ceo@bank.example" <attacker@evil.example>``
    was shown as ceo@bank.example: a name must not pass for the address it is not).  Such a
    name with no address at all (``"ceo@bank.example" <>``) is shown as stored, quoted."""
    m = re.match(r"^(.*?)\s*<([^<>]*)>$", value)  # the last <...> is the address
    if not m:
        return value
    name, addr = m.group(1).strip(), m.group(2)
    if len(name) > 1 and name[0] == name[-1] == '"':
        name = re.sub(r"\\(.)", r"\1", name[1:-1]).strip()
    if not name or any(at in name for at in AT_SIGNS) or "<" in name:
        return addr or value
    return name


def format_hit(hit: Hit, *, color: bool) -> str:
    """One line: date, sender, subject, short id, and the snippet (terms bold on a terminal)."""
    stamp = iso_utc(hit.date) if hit.date else "????-??-??T??:??"
    date = f"{stamp[:10]} {stamp[11:16]}"
    head = f"{date}  {_fit(sender(hit.from_), 24)}  {_fit(hit.subject or '(no subject)', 50)}"
    line = f"{head}  {hit.id[:12]}"
    if hit.snippet:
        snippet = clean(hit.snippet)
        if color and hit.highlights:
            out, cursor = "", 0
            for start, end in hit.highlights:
                out += snippet[cursor:start] + BOLD + snippet[start:end] + RESET
                cursor = end
            snippet = out + snippet[cursor:]
        line += f"  {snippet}"
    return line


def iter_lines(results: Results, *, mode: str, color: bool) -> Iterator[str]:
    return lines(results.hits, mode=mode, color=color)


def lines(hits: Iterable[Hit], *, mode: str, color: bool) -> Iterator[str]:
    """Each hit's line, made as the hit comes (``hits`` may be read from the index as they are
    asked for: ``engine.Page``)."""
    import json

    for hit in hits:
        if mode == "ids":
            yield hit.id
        elif mode == "json":
            # one hit, one line: also for a reader that splits on U+2028 or U+0085
            yield json_safe(json.dumps(hit.as_json(), ensure_ascii=False))
        else:
            yield format_hit(hit, color=color)


def isatty(stream: Any) -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
