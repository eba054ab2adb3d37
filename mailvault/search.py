"""`mailvault search`: the query language, its translation to Tantivy's, and execution.

This module is the search path, so it imports only tantivy, the standard library,
``mailvault.errors`` and ``mailvault.index``: no sqlite-utils, no parser, no PDF library.  A
hit's printed fields come from the index's stored fields, never from the catalog.

The query language is Tantivy's with friendly forms rewritten first (docs/search.md):

    from:alice@example.com     exact address (also to: cc: bcc: recipient:)
    from:alice  from:example.com   words of the display name or address
    subject:  body:  attachment:  attachment-text:  message-id:  list:  thread:  account:  id:
    "a phrase"  "a phrase"~2  word*  "phrase pre"*
    AND  OR  NOT  && || !  +word  -word  ( )  field:(a OR b)
    date:2024  date:2024-03  date:2024-03-05  date:[2024-01-01 TO 2024-03-31]  date:>=2024-02
    after:2024-01-01  before:2024-04-01
    has:attachment  is:unreadable
    size:>1M  size:<10k  size:>=2048  size:[1k TO 1M]

Words next to each other must all match (AND); AND binds tighter than OR.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import unicodedata
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import tantivy

from mailvault import index as ix
from mailvault.errors import QuerySyntaxError, SearchError

# Neither `typing` nor `pathlib` is imported at run time: they are a few ms of every `mailvault
# search` start-up (paths are handled with os.path here; callers may pass Path objects).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

# -- the user-visible field names ---------------------------------------------------------------

# name as typed -> (kind, index field)
FIELD_ALIASES: dict[str, tuple[str, str]] = {
    "from": ("addr", "from"),
    "to": ("addr", "to"),
    "cc": ("addr", "cc"),
    "bcc": ("addr", "bcc"),
    "recipient": ("addr", "recipient"),  # to, cc or bcc
    "subject": ("text", "subject"),
    "body": ("text", "body"),
    "attachment": ("text", "attachment"),
    "filename": ("text", "attachment"),
    "attachment-text": ("text", "attachment_text"),
    "attachment_text": ("text", "attachment_text"),
    "list": ("text", "list_id"),
    "list-id": ("text", "list_id"),
    "list_id": ("text", "list_id"),
    "message-id": ("msgid", "message_id"),
    "message_id": ("msgid", "message_id"),
    "mid": ("msgid", "message_id"),
    "thread": ("msgid", "thread"),
    "account": ("raw", "account"),
    "id": ("sha", "id"),
    "date": ("date", "date"),
    "after": ("after", "date"),
    "before": ("before", "date"),
    "size": ("size", "size"),
    "has": ("has", ""),
    "is": ("is", ""),
}
PRIMARY_FIELDS = [
    "from",
    "to",
    "cc",
    "bcc",
    "recipient",
    "subject",
    "body",
    "attachment",
    "attachment-text",
    "message-id",
    "list",
    "thread",
    "account",
    "id",
    "date",
    "after",
    "before",
    "size",
    "has",
    "is",
]
VIRTUAL_FIELDS = {"recipient": ("to", "cc", "bcc")}
HAS_VALUES = {"attachment": "has_attachment:true", "attachments": "has_attachment:true"}
IS_VALUES = {"unreadable": "unreadable:true"}

ADDRESS = re.compile(r"^[^@\s]+@[^@\s]+$")
FIELD_PREFIX = re.compile(r"^([A-Za-z][A-Za-z0-9_-]*):")
BOOST = re.compile(r"\^(\d+(?:\.\d+)?)$")
SIZE_VALUE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?$", re.IGNORECASE)
SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
DATE_VALUE = re.compile(r"^(\d{4})(?:[-/](\d{1,2})(?:[-/](\d{1,2}))?)?$")
# C0/C1 controls, zero-width and bidi controls: each becomes a space (a translate table is
# cheaper to build at start-up than the equivalent regex).
CONTROL = dict.fromkeys(
    [
        *range(0x00, 0x20),
        *range(0x7F, 0xA0),
        *range(0x200B, 0x2010),
        *range(0x202A, 0x202F),
        *range(0x2066, 0x206A),
    ],
    " ",
)

SORTS = ("-date", "date", "score")
SNIPPET_CHARS = 160
BOLD, RESET = "\033[1m", "\033[0m"


def _fail(query: str, pos: int, length: int, message: str) -> QuerySyntaxError:
    """An error that quotes the bad token and its column (1-based) in the user's query."""
    token = query[pos : pos + max(length, 1)] if pos < len(query) else "end of query"
    # columns as the user typed the query: without the joiners normalize() put in CJK runs
    where = f"at column {len(ix.display(query[:pos])) + 1}" if pos < len(query) else "at the end"
    token, query = ix.display(token), ix.display(query)
    return QuerySyntaxError(f"invalid query: {message}: {token!r} {where} of {query!r}")


# -- lexing ------------------------------------------------------------------------------------


class _Tok:
    """One lexed token.  (Plain classes, not dataclasses: ``dataclasses`` imports ``inspect``,
    which costs the search path ~7 ms at start-up.)"""

    __slots__ = ("kind", "pos", "end", "text", "field", "value", "quoted", "suffix", "modifier")

    def __init__(
        self,
        kind: str,  # "(" ")" "op" "term"
        pos: int,
        end: int,
        text: str = "",  # op name, or the raw term text
        *,
        field: str | None = None,  # as typed, lower-cased
        modifier: str = "",  # "+" "-" or ""
    ) -> None:
        self.kind, self.pos, self.end, self.text = kind, pos, end, text
        self.field, self.modifier = field, modifier
        self.value = ""  # term value without field, quotes and suffix
        self.quoted = False
        self.suffix = ""  # after a closing quote: ~N, *, ^N


SPECIAL = set('()"')


def _lex(query: str) -> list[_Tok]:
    toks: list[_Tok] = []
    i, n = 0, len(query)
    field_stack: list[str | None] = []
    while i < n:
        c = query[i]
        if c.isspace():
            i += 1
            continue
        if c == "(":
            toks.append(_Tok("(", i, i + 1))
            field_stack.append(None)
            i += 1
            continue
        if c == ")":
            toks.append(_Tok(")", i, i + 1))
            if field_stack:
                field_stack.pop()
            i += 1
            continue
        start = i
        modifier = ""
        if c in "+-!" and i + 1 < n and not query[i + 1].isspace():
            modifier = "-" if c in "-!" else "+"
            i += 1
            if query[i] == "(":
                toks.append(_Tok("(", start, i + 1, modifier=modifier))
                field_stack.append(field_stack[-1] if field_stack else None)
                i += 1
                continue
        # an operator word?
        m = re.match(r"(AND|OR|NOT|&&|\|\||!)(?=[\s()]|$)", query[i:])
        if m and not modifier:
            op = {"&&": "AND", "||": "OR", "!": "NOT"}.get(m.group(1), m.group(1))
            toks.append(_Tok("op", start, i + m.end(), op))
            i += m.end()
            continue
        fm = FIELD_PREFIX.match(query[i:])
        fname: str | None = None
        if fm:
            fname = fm.group(1).lower()
            if fname not in FIELD_ALIASES:
                raise _fail(
                    query,
                    i,
                    fm.end(),
                    f"unknown field {fm.group(1)!r} (known: {', '.join(PRIMARY_FIELDS)};"
                    " to search for the text, put it in double quotes)",
                )
            i += fm.end()
            if i < n and query[i] == "(":
                # field:( ... ): the field applies to every term inside
                toks.append(_Tok("(", start, i + 1, modifier=modifier))
                field_stack.append(fname)
                i += 1
                continue
        elif field_stack and field_stack[-1] is not None:
            fname = field_stack[-1]
        tok = _Tok("term", start, i, field=fname, modifier=modifier)
        if i < n and query[i] == '"':
            close = query.find('"', i + 1)
            while close != -1 and query[close - 1] == "\\":
                close = query.find('"', close + 1)
            if close == -1:
                raise _fail(query, i, n - i, 'unclosed double quote (add a closing ")')
            tok.value = query[i + 1 : close].replace('\\"', '"')
            tok.quoted = True
            i = close + 1
            sm = re.match(r"(~\d+|\*|\^\d+(?:\.\d+)?)*", query[i:])
            tok.suffix = sm.group(0) if sm else ""
            i += len(tok.suffix)
            if i < n and query[i] in "~^":
                raise _fail(
                    query, i, 1, f'{query[i]} after a phrase takes a number (as in "a b"~2)'
                )
        elif i < n and query[i] in "[{":
            close = min(
                (p for p in (query.find("]", i), query.find("}", i)) if p != -1), default=-1
            )
            if close == -1:
                raise _fail(query, i, n - i, "unclosed range (end it with ] or })")
            tok.value = query[i : close + 1]
            i = close + 1
        else:
            j = i
            while j < n and not query[j].isspace() and query[j] not in SPECIAL:
                j += 1
            tok.value = query[i:j]
            i = j
            if not tok.value and fname is not None:
                raise _fail(query, start, i - start, "a field needs a value")
        tok.end = i
        tok.text = query[start:i]
        toks.append(tok)
    return toks


# -- translation -------------------------------------------------------------------------------


def _quote(value: str) -> str:
    return '"' + value.replace("\\", " ").replace('"', " ") + '"'


def _regex_escape(value: str) -> str:
    return re.sub(r"([\\.+*?()|\[\]{}^$#&~/<>\"-])", r"\\\1", value)


def _fold(value: str) -> list[str]:
    """The query-side analysis of a text value (same as the indexed side)."""
    return list(_analyzer().analyze(ix.normalize(value)))


_ANALYZER: list[tantivy.TextAnalyzer] = []


def _analyzer() -> tantivy.TextAnalyzer:
    if not _ANALYZER:
        _ANALYZER.append(ix.text_analyzer())
    return _ANALYZER[0]


def _fields_of(name: str | None) -> tuple[str, ...]:
    if name is None:
        return ix.DEFAULT_FIELDS
    return VIRTUAL_FIELDS.get(name, (name,))


def _any(clauses: list[str]) -> str:
    return clauses[0] if len(clauses) == 1 else "(" + " OR ".join(clauses) + ")"


def _day_start(query: str, tok: _Tok, value: str) -> tuple[datetime, datetime]:
    """The [start, end) instants of a date value: a year, a month, a day, or a timestamp."""
    m = DATE_VALUE.match(value)
    try:
        if m:
            year, month, day = int(m.group(1)), m.group(2), m.group(3)
            if month is None:
                return datetime(year, 1, 1, tzinfo=UTC), datetime(year + 1, 1, 1, tzinfo=UTC)
            mon = int(month)
            if day is None:
                start = datetime(year, mon, 1, tzinfo=UTC)
                end = datetime(year + (mon == 12), mon % 12 + 1, 1, tzinfo=UTC)
                return start, end
            start = datetime(year, mon, int(day), tzinfo=UTC)
            return start, start + timedelta(days=1)
        stamp = datetime.fromisoformat(value)
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=UTC)
        stamp = stamp.astimezone(UTC)
        return stamp, stamp + timedelta(seconds=1)
    except ValueError:
        raise _fail(
            query, tok.pos, tok.end - tok.pos, "expected a date YYYY, YYYY-MM or YYYY-MM-DD"
        ) from None


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _size(query: str, tok: _Tok, value: str) -> int:
    m = SIZE_VALUE.match(value.strip())
    if not m:
        raise _fail(
            query, tok.pos, tok.end - tok.pos, "expected a size such as 2048, 10k, 1.5M or 2G"
        )
    size = int(float(m.group(1)) * SIZE_UNITS[m.group(2).lower()])
    if size >= 2**63:  # the index stores sizes as signed 64-bit integers
        raise _fail(
            query, tok.pos, tok.end - tok.pos, f"size too large for the index (at most {2**63 - 1})"
        )
    return size


RANGE = re.compile(r"^([\[{])\s*(\S+)\s+TO\s+(\S+)\s*([\]}])$")
COMPARE = re.compile(r"^(>=|<=|>|<)(.+)$")


def _date_clause(query: str, tok: _Tok, kind: str) -> str:
    value = tok.value.strip()
    if kind == "after":
        return f"date:[{_iso(_day_start(query, tok, value)[0])} TO *]"
    if kind == "before":
        return f"date:[* TO {_iso(_day_start(query, tok, value)[0])}}}"
    rm = RANGE.match(value)
    if rm:
        low, high = rm.group(2), rm.group(3)
        lo = "*" if low == "*" else _iso(_day_start(query, tok, low)[rm.group(1) == "{"])
        hi = "*" if high == "*" else _iso(_day_start(query, tok, high)[rm.group(4) == "]"])
        return f"date:[{lo} TO {hi}}}" if hi != "*" else f"date:[{lo} TO *]"
    cm = COMPARE.match(value)
    if cm:
        start, end = _day_start(query, tok, cm.group(2))
        return {
            ">": f"date:[{_iso(end)} TO *]",
            ">=": f"date:[{_iso(start)} TO *]",
            "<": f"date:[* TO {_iso(start)}}}",
            "<=": f"date:[* TO {_iso(end)}}}",
        }[cm.group(1)]
    if value.startswith(("[", "{")):
        raise _fail(query, tok.pos, tok.end - tok.pos, "expected a range [FROM TO UNTIL]")
    start, end = _day_start(query, tok, value)
    return f"date:[{_iso(start)} TO {_iso(end)}}}"


def _size_clause(query: str, tok: _Tok) -> str:
    value = tok.value.strip()
    rm = RANGE.match(value)
    if rm:
        lo = "*" if rm.group(2) == "*" else str(_size(query, tok, rm.group(2)))
        hi = "*" if rm.group(3) == "*" else str(_size(query, tok, rm.group(3)))
        return f"size:{rm.group(1)}{lo} TO {hi}{rm.group(4)}"
    cm = COMPARE.match(value)
    if cm:
        return f"size:{cm.group(1)}{_size(query, tok, cm.group(2))}"
    return f"size:{_size(query, tok, value)}"


def _prefix_clause(query: str, tok: _Tok, fields: tuple[str, ...], value: str) -> str:
    words = _fold(value)
    if not words and tok.field is not None and not value.strip():
        return _any([f"{f}:/.+/" for f in fields])  # `to:*`: any value at all in the field
    if not words:
        raise _fail(query, tok.pos, tok.end - tok.pos, "nothing to search for before the *")
    if len(words) == 1:
        pattern = _regex_escape(words[0]) + ".*"
        return _any([f"{f}:/{pattern}/" for f in fields])
    phrase = _quote(" ".join(words))
    return _any([f"{f}:{phrase}*" for f in fields])


def _term_clause(query: str, tok: _Tok) -> str:
    value = tok.value
    kind, target = FIELD_ALIASES[tok.field] if tok.field else ("text", "")
    span = (tok.pos, tok.end - tok.pos)
    if tok.field is None and not tok.quoted and value == "*":
        return "*"
    if kind in ("date", "after", "before"):
        return _date_clause(query, tok, kind)
    if kind == "size":
        return _size_clause(query, tok)
    if kind in ("has", "is"):
        table = HAS_VALUES if kind == "has" else IS_VALUES
        clause = table.get(value.lower())
        if clause is None:
            raise _fail(query, *span, f"{kind}: takes one of {', '.join(sorted(table))}")
        return clause
    if kind == "sha":
        digest = value.lower()
        if not re.fullmatch(r"[0-9a-f]{1,64}\*?", digest):
            raise _fail(query, *span, "id: takes a sha256 or a prefix of one (hex digits)")
        digest = digest.rstrip("*")
        return f"id:{_quote(digest)}" if len(digest) == 64 else f"id:/{digest}.*/"
    if kind in ("msgid", "raw"):
        raw = value.strip()
        if kind == "msgid":
            raw = raw.removeprefix("<").removesuffix(">")
            if not raw.strip("<>* "):
                raise _fail(query, *span, "message-id: needs an id (as in message-id:<abc@x>)")
        if not tok.quoted and raw.endswith("*"):
            return f"{target}:/{_regex_escape(raw[:-1])}.*/"
        return f"{target}:{_quote(raw)}"
    fields = _fields_of(target or None)
    boost = ""
    suffix = tok.suffix
    if not tok.quoted:
        bm = BOOST.search(value)
        if bm:
            boost, value = "^" + bm.group(1), value[: bm.start()]
        elif "^" in value:
            raise _fail(query, *span, "^ takes a number (a boost, as in word^2)")
        if kind == "addr" and value.startswith("*@") and len(value) > 2:
            value = value[2:]  # from:*@example.com: the domain, as from:example.com finds it
        if "*" in value.rstrip("*"):
            raise _fail(query, *span, "* only ends a word (a prefix, as in invoic*)")
    if kind == "addr" and ADDRESS.match(value) and not value.endswith("*") and not suffix:
        return _any([f"{f}_addr:{_quote(value.lower())}{boost}" for f in fields])
    if (not tok.quoted and value.endswith("*")) or (tok.quoted and suffix.startswith("*")):
        return _prefix_clause(query, tok, fields, value.rstrip("*"))
    text = ix.normalize(value)
    if not re.search(r"\w", text):
        raise _fail(
            query,
            *span,
            "nothing to search for here (no letters or digits); quote it if you mean it",
        )
    if target:
        return _any([f"{f}:{_quote(text)}{suffix}{boost}" for f in fields])
    return f"{_quote(text)}{suffix}{boost}"


def translate(query: str) -> str:
    """Rewrite a mailvault query into Tantivy's query language (raises QuerySyntaxError)."""
    return _translate(query)[0]


def _translate(query: str) -> tuple[str, list[str]]:
    """The Tantivy query, and the folded words the body snippet should show."""
    query = ix.normalize(query)
    if not query.strip():
        raise QuerySyntaxError("invalid query: it is empty (use '*' to match every message)")
    toks = _lex(query)
    out, _ = _group(query, toks, 0, top=True)
    words: list[str] = []
    for tok in toks:
        if (
            tok.kind == "term"
            and tok.modifier != "-"
            and tok.field in (None, "body")
            and tok.value != "*"
        ):
            value = tok.value.rstrip("*")
            # folded (as indexed) and as typed: the body is searched for either
            for w in [*_fold(value), *re.findall(r"\w+", value.lower())]:
                if w not in words:
                    words.append(w)
    return out, words


def _group(query: str, toks: list[_Tok], i: int, *, top: bool) -> tuple[str, int]:
    """Translate tokens up to the matching ')' (or the end); AND binds tighter than OR."""
    runs: list[list[tuple[str, bool]]] = [[]]  # runs of ANDed (clause, negated)
    negate_next = False
    dangling: _Tok | None = None  # an operator still waiting for its right-hand side
    while i < len(toks):
        tok = toks[i]
        if tok.kind == ")":
            if top:
                raise _fail(query, tok.pos, 1, "unmatched closing parenthesis")
            break
        if tok.kind == "op":
            if tok.text == "NOT":
                negate_next = not negate_next
            elif dangling is not None and dangling.text in ("AND", "OR"):
                raise _fail(
                    query,
                    tok.pos,
                    tok.end - tok.pos,
                    f"{tok.text} right after {dangling.text}: a word is missing between them",
                )
            elif not runs[-1]:
                raise _fail(query, tok.pos, tok.end - tok.pos, f"{tok.text} needs a left side")
            elif tok.text == "OR":
                runs.append([])
            dangling = tok
            i += 1
            continue
        if tok.kind == "(":
            inner, i = _group(query, toks, i + 1, top=False)
            if i >= len(toks) or toks[i].kind != ")":
                raise _fail(query, tok.pos, tok.end - tok.pos, "unclosed parenthesis (add a ')')")
            clause = f"({inner})"
        else:
            clause = _term_clause(query, tok)
        negated = negate_next != (tok.modifier == "-")
        runs[-1].append((clause, negated))
        negate_next = False
        dangling = None
        i += 1
    if dangling is not None:
        raise _fail(
            query, dangling.pos, dangling.end - dangling.pos, f"{dangling.text} needs a right side"
        )
    if not runs[-1]:
        if len(runs) == 1 and not top and i >= len(toks):
            return "", i  # `(` at the end: the caller reports the unclosed parenthesis
        if len(runs) == 1 and not top:
            opening = toks[i - 1]
            raise _fail(query, opening.pos, opening.end - opening.pos, "empty parentheses")
        if len(runs) == 1:
            raise QuerySyntaxError("invalid query: nothing to search for")
    parts = []
    for run in runs:
        clauses = [("-" if neg else "") + c for c, neg in run]
        if all(neg for _, neg in run):
            clauses.insert(0, "*")
        parts.append(clauses[0] if len(clauses) == 1 else "(" + " AND ".join(clauses) + ")")
    return " OR ".join(parts), i


# -- execution ---------------------------------------------------------------------------------


class Hit:
    """One search hit, from the index's stored fields."""

    __slots__ = (
        "id", "message_id", "date", "from_", "to", "subject", "size", "score", "snippet",
        "highlights",
    )  # fmt: skip

    def __init__(
        self,
        *,
        id: str,
        message_id: str,
        date: datetime | None,
        from_: str,
        to: list[str],
        subject: str,
        size: int,
        score: float | None,
    ) -> None:
        self.id, self.message_id, self.date = id, message_id, date
        self.from_, self.to, self.subject = from_, to, subject
        self.size, self.score = size, score
        self.snippet = ""
        self.highlights: list[tuple[int, int]] = []  # char ranges in snippet

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "message_id": self.message_id,
            "date": _iso(self.date) if self.date else None,
            "from": self.from_,
            "to": self.to,
            "subject": self.subject,
            "size": self.size,
            "score": self.score,
            "snippet": self.snippet,
        }


class Results:
    __slots__ = ("total", "hits")

    def __init__(self, total: int | None, hits: list[Hit]) -> None:
        self.total, self.hits = total, hits


class Searcher:
    """An opened index and a parsed query: count it, or fetch one page of hits."""

    def __init__(self, index_dir: str | os.PathLike[str], query: str) -> None:
        self.query_text = query
        self.translated, self.words = _translate(query)
        self.index = ix.open_for_search(index_dir)
        self.query = self._parse(query)
        self.searcher = self.index.searcher()

    def _parse(self, original: str) -> tantivy.Query:
        try:
            return self.index.parse_query(
                self.translated,
                default_field_names=list(ix.DEFAULT_FIELDS),
                field_boosts=ix.FIELD_BOOSTS,
                conjunction_by_default=True,
                allow_regexes=True,
            )
        except ValueError as exc:
            raise QuerySyntaxError(
                f"invalid query {original!r}: {exc} (as Tantivy query: {self.translated!r})"
            ) from None

    def count(self) -> int:
        result = self.searcher.search(self.query, 1, count=True)
        return int(getattr(result, "count", 0) or 0)

    def page(
        self, *, limit: int = 50, offset: int = 0, sort: str = "-date", snippets: bool = True
    ) -> list[Hit]:
        if sort not in SORTS:
            raise SearchError(f"unknown sort {sort!r}; use one of {', '.join(SORTS)}")
        if limit <= 0:
            limit = max(self.searcher.num_docs, 1)
        try:
            if sort == "score":
                result = self.searcher.search(self.query, limit, count=False, offset=offset)
            else:
                result = self.searcher.search(
                    self.query,
                    limit,
                    count=False,
                    order_by_field="date",
                    offset=offset,
                    order=tantivy.Order.Desc if sort == "-date" else tantivy.Order.Asc,
                )
        except ValueError as exc:
            raise QuerySyntaxError(f"invalid query {self.query_text!r}: {exc}") from None
        generator = None
        if snippets and result.hits and self.words:
            generator = tantivy.SnippetGenerator.create(
                self.searcher, self.query, self.index.schema, "body"
            )
            generator.set_max_num_chars(SNIPPET_CHARS)
        hits = []
        for key, address in result.hits:
            doc = self.searcher.doc(address)
            hit = _hit(doc, float(key) if sort == "score" else None)
            if snippets:
                hit.snippet, hit.highlights = _snippet(generator, doc, self.words)
            hits.append(hit)
        return hits


def _first(doc: tantivy.Document, name: str, default: Any = "") -> Any:
    value = doc.get_first(name)
    return default if value is None else value


def _hit(doc: tantivy.Document, score: float | None) -> Hit:
    date = doc.get_first("date")
    if isinstance(date, datetime) and date.tzinfo is None:
        date = date.replace(tzinfo=UTC)
    return Hit(
        id=_first(doc, "id"),
        message_id=_first(doc, "message_id"),
        date=date,
        from_=ix.display(_first(doc, "from")),
        to=[ix.display(t) for t in doc.get_all("to")],
        subject=ix.display(_first(doc, "subject")),
        size=int(_first(doc, "size", 0)),
        score=score,
    )


def _snippet(
    generator: tantivy.SnippetGenerator | None, doc: tantivy.Document, words: list[str]
) -> tuple[str, list[tuple[int, int]]]:
    """The best fragment of the body, whitespace collapsed, with char ranges of the terms.

    Tantivy's generator tokenizes the text it is given, so it gets a window of the body around
    the first place a query word occurs (found with a plain search, as written, capitalised,
    then lower-cased: lower-casing a long body costs more than the searches) rather than the
    whole body; the window is small because tokenizing it is most of a hit's cost.  Where
    nothing is found (accents folded away) it gets the first 20,000 chars.
    """
    body = str(_first(doc, "body"))
    if generator is None or not words:
        return " ".join(ix.display(body[: SNIPPET_CHARS * 3]).split())[:SNIPPET_CHARS], []
    found = [p for w in words for p in (body.find(w), body.find(w.capitalize())) if p >= 0]
    if not found:
        low = body.lower()
        found = [p for p in (low.find(w) for w in words) if p >= 0]
    if found:
        quick = _plain_snippet(body, min(found), words)
        if quick is not None:
            return quick
    start = max(min(found) - 200, 0) if found else 0
    window = body[start : start + (600 if found else 20_000)]
    if start:
        window = window[window.find(" ") + 1 :]  # do not start mid-word
    probe = tantivy.Document()
    probe.add_text("body", window)
    snip = generator.snippet_from_doc(probe)
    fragment = snip.fragment()
    ranges_bytes = sorted((r.start, r.end) for r in snip.highlighted())
    if not fragment.strip() or not ranges_bytes:
        if not found:
            return " ".join(ix.display(body[: SNIPPET_CHARS * 3]).split())[:SNIPPET_CHARS], []
        # a prefix (word*) query: tantivy does not highlight those; mark the word ourselves
        at = min(found)
        begin = max(body.rfind(" ", 0, max(at - 50, 0)) + 1, 0)
        fragment = body[begin : begin + SNIPPET_CHARS]
        m = re.match(r"\w+", fragment[at - begin :])
        rel = at - begin
        ranges_bytes = []
        if m:
            b0 = len(fragment[:rel].encode("utf-8"))
            ranges_bytes = [(b0, b0 + len(m.group(0).encode("utf-8")))]
    raw = fragment.encode("utf-8")
    pieces: list[tuple[str, bool]] = []
    cursor = 0
    for begin_b, end_b in ranges_bytes:
        if begin_b < cursor:
            continue
        pieces.append((raw[cursor:begin_b].decode("utf-8", "replace"), False))
        pieces.append((raw[begin_b:end_b].decode("utf-8", "replace"), True))
        cursor = end_b
    pieces.append((raw[cursor:].decode("utf-8", "replace"), False))
    text, ranges = "", []
    for piece, marked in pieces:
        piece = re.sub(r"\s+", " ", ix.display(piece))
        if not text:
            piece = piece.lstrip()
        if marked and piece:
            ranges.append((len(text), len(text) + len(piece)))
        text += piece
    return text.rstrip(), ranges


_TOKEN = re.compile(r"\w+")
SNIPPET_LEAD = 40  # characters of context before the first query word


def _plain_snippet(
    body: str, at: int, words: list[str]
) -> tuple[str, list[tuple[int, int]]] | None:
    """The fragment from a little before ``at``, with every token that is a query word marked.

    Most snippets need nothing more, and this costs a few microseconds where tokenizing a
    window with Tantivy's generator costs tens: a tenth of a search's run time for 50 hits.
    None (Tantivy's generator decides) when no token matches as written or lower-cased
    (accents folded, a prefix query) or for CJK text, whose tokens the index splits per
    character.
    """
    begin = body.rfind(" ", 0, max(at - SNIPPET_LEAD, 0)) + 1
    text = " ".join(ix.display(body[begin : begin + SNIPPET_CHARS * 2]).split())
    if len(text) > SNIPPET_CHARS:
        cut = text.rfind(" ", 0, SNIPPET_CHARS + 1)
        text = text[: cut if cut > 0 else SNIPPET_CHARS]
    if not text.isascii() and max(text) >= ix.CJK[0]:
        return None
    wanted = set(words)
    ranges = [m.span() for m in _TOKEN.finditer(text) if m.group().lower() in wanted]
    return (text, ranges) if ranges else None


def search(
    index_dir: Path,
    query: str,
    *,
    limit: int = 50,
    offset: int = 0,
    sort: str = "-date",
    snippets: bool = True,
) -> Results:
    """Run a query; ``total`` is counted only when asked for via :func:`count`."""
    s = Searcher(index_dir, query)
    return Results(
        total=None, hits=s.page(limit=limit, offset=offset, sort=sort, snippets=snippets)
    )


def count(index_dir: Path, query: str) -> int:
    return Searcher(index_dir, query).count()


# -- output ------------------------------------------------------------------------------------


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


def _short_from(value: str) -> str:
    m = re.match(r"^(.*\S)\s*<([^<>]*)>$", value)
    return m.group(1).strip('"') if m else value


def format_hit(hit: Hit, *, color: bool) -> str:
    """One line: date, sender, subject, short id, and the snippet (terms bold on a terminal)."""
    date = hit.date.strftime("%Y-%m-%d %H:%M") if hit.date else "????-??-?? ??:??"
    head = f"{date}  {_fit(_short_from(hit.from_), 24)}  {_fit(hit.subject or '(no subject)', 50)}"
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
    import json

    for hit in results.hits:
        if mode == "ids":
            yield hit.id
        elif mode == "json":
            yield json.dumps(hit.as_json(), ensure_ascii=False)
        else:
            yield format_hit(hit, color=color)


def run(
    vault_root: str | os.PathLike[str],
    query: str,
    *,
    limit: int = 50,
    offset: int = 0,
    sort: str = "-date",
    mode: str = "text",
    out: Any = None,
    exiting: bool = False,
) -> int:
    """The whole `mailvault search` after argument parsing; returns the exit code (0 hits, 1 none).

    Click-free, so that a fast entry point can call it without importing the CLI group.
    """
    from mailvault.audit import record as audit
    from mailvault.vault import check_vault

    stream = out or sys.stdout
    check_vault(vault_root)  # the marker and the permission checks; cheap, nothing is loaded
    searcher = Searcher(os.path.join(vault_root, "index"), query)
    if mode == "count":
        n = searcher.count()
        audit(vault_root, "search", query, n, exiting=exiting, mode=mode)
        stream.write(f"{n}\n")
        return 0 if n else 1
    color = mode == "text" and _isatty(stream)
    hits = searcher.page(limit=limit, offset=offset, sort=sort, snippets=mode in ("text", "json"))
    # The audit entry is durable before anything is shown (fail closed).
    detail = {"mode": mode, "limit": limit, "offset": offset, "sort": sort}
    audit(vault_root, "search", query, len(hits), exiting=exiting, **detail)
    results = Results(total=None, hits=hits)
    try:
        for line in iter_lines(results, mode=mode, color=color):
            stream.write(line + "\n")
        stream.flush()
    except BrokenPipeError:  # `mailvault search x | head`
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
    return 0 if hits else 1


def _isatty(stream: Any) -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


# -- a click-free entry for `mailvault search` -------------------------------------------------

_SEARCH_FLAGS = {"--json": "json", "--count": "count", "--ids": "ids"}
_SEARCH_VALUES = ("--limit", "--offset", "--sort")


def fast_main(argv: list[str], *, exiting: bool = False) -> int | None:
    """Run ``[--vault P] [-q] [-v] search [options] QUERY...`` without importing click or the
    CLI group; None when ``argv`` is anything else (help, other commands, odd options), so the
    caller falls back to the full CLI, which gives the same results and messages.  ``exiting``:
    the caller ends the process right after (see ``audit.record``).
    """
    args = list(argv)
    vault: str | None = None
    while args and args[0] != "search":
        head = args.pop(0)
        if head == "--vault" and args:
            vault = args.pop(0)
        elif head.startswith("--vault="):
            vault = head.split("=", 1)[1]
        elif head not in ("-q", "--quiet", "-v", "-vv", "--verbose"):
            return None
    if not args:
        return None
    args.pop(0)
    opts: dict[str, Any] = {"limit": 50, "offset": 0, "sort": "-date"}
    modes: list[str] = []
    words: list[str] = []
    while args:
        arg = args.pop(0)
        if arg == "--":
            words.extend(args)
            break
        name, eq, inline = arg.partition("=")
        if name in _SEARCH_FLAGS and not eq:
            modes.append(_SEARCH_FLAGS[name])
        elif name in _SEARCH_VALUES:
            value = inline if eq else (args.pop(0) if args else None)
            if value is None:
                return None
            if name == "--sort":
                if value not in SORTS:
                    return None
                opts["sort"] = value
            else:
                if not value.isdigit():
                    return None
                opts[name[2:]] = int(value)
        elif arg.startswith("--"):
            return None  # --help and anything unknown: the full CLI explains
        else:
            words.append(arg)
    if not words or len(modes) > 1:
        return None
    if vault is None:
        vault = os.environ.get("MAILVAULT_VAULT") or None
    if vault is None:
        base = os.environ.get("XDG_DATA_HOME") or os.path.join(
            os.path.expanduser("~"), ".local", "share"
        )
        vault = os.path.join(base, "mailvault")
    from mailvault.errors import MailvaultError

    try:
        mode = modes[0] if modes else "text"
        return run(vault, " ".join(words), mode=mode, exiting=exiting, **opts)
    except MailvaultError as exc:
        sys.stderr.write(f"mailvault: error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("mailvault: interrupted\n")
        return 130
