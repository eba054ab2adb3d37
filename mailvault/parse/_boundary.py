"""A cheaper multipart boundary test for the standard library's MIME parser.

``email.feedparser`` compiles a regular expression for every multipart boundary it meets::

    re.compile('(?P<sep>' + re.escape(separator) + r')(?P<end>--)?(?P<ws>[ \t]*)(?P<linesep>\r\n|\r|\n)?$')

Boundaries are unique per message, so the ``re`` cache never hits, and compiling was about a
quarter of the time it takes to parse a typical multipart message.  That pattern only says: the
line starts with the separator, then ``--`` perhaps, blanks and a line ending perhaps, nothing
else.  ``install`` gives feedparser a ``re`` whose ``compile`` returns exactly that test for
exactly that pattern, and the real ``re.compile`` for any other pattern, so another Python's
feedparser with another pattern simply gets the real thing.  The test checks the separator
with ``str.startswith`` and then matches an expression compiled once per separator *length*,
so the match object has the same groups and spans the original pattern would give.
"""

from __future__ import annotations

import email.feedparser
import re
import types
from typing import Any

_PREFIX = "(?P<sep>"
_SUFFIX = r")(?P<end>--)?(?P<ws>[ \t]*)(?P<linesep>\r\n|\r|\n)?$"
_BY_LENGTH: dict[int, re.Pattern[str]] = {}
MAX_LENGTHS = 512
_ESCAPED_CHAR = re.compile(r"\\(.)", re.DOTALL)


class BoundaryMatcher:
    """What the compiled boundary pattern does, for the one method feedparser calls."""

    __slots__ = ("separator", "_pattern")

    def __init__(self, separator: str) -> None:
        self.separator = separator
        pattern = _BY_LENGTH.get(len(separator))
        if pattern is None:
            pattern = re.compile(f"{_PREFIX}[\\s\\S]{{{len(separator)}}}{_SUFFIX}")
            if len(_BY_LENGTH) < MAX_LENGTHS:  # a hostile message cannot grow it without bound
                _BY_LENGTH[len(separator)] = pattern
        self._pattern = pattern

    def match(self, line: str) -> re.Match[str] | None:
        if not line.startswith(self.separator):
            return None
        return self._pattern.match(line)


def compile_pattern(pattern: Any, flags: int = 0) -> Any:
    """``re.compile``, except for feedparser's boundary pattern."""
    if (
        flags == 0
        and isinstance(pattern, str)
        and pattern.startswith(_PREFIX)
        and pattern.endswith(_SUFFIX)
    ):
        escaped = pattern[len(_PREFIX) : -len(_SUFFIX)]
        separator = _ESCAPED_CHAR.sub(r"\1", escaped)
        if re.escape(separator) == escaped:  # exactly what feedparser built, nothing else
            return BoundaryMatcher(separator)
    return re.compile(pattern, flags)


def install() -> None:
    """Give ``email.feedparser`` the ``re`` above (idempotent; this process only)."""
    current = getattr(email.feedparser, "re", None)
    if getattr(current, "compile", None) is compile_pattern:
        return
    shim = types.ModuleType("re", "re, with a cheaper compile for MIME boundary patterns")
    shim.__dict__.update({k: v for k, v in vars(re).items() if not k.startswith("__")})
    shim.compile = compile_pattern  # type: ignore[attr-defined]
    setattr(email.feedparser, "re", shim)  # noqa: B010 - typeshed does not list the module's re
