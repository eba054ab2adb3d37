"""The query language: lexing a mailvault query and translating it into Tantivy's.

Pure string work (plus Tantivy's analyzer, so that query words are folded exactly as the indexed
text was); nothing here opens an index.  Errors quote the bad token and its column.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import tantivy

from mailvault import index as ix
from mailvault.errors import QuerySyntaxError

TYPE_CHECKING = False  # `typing` costs the search path start-up time; annotations only
if TYPE_CHECKING:
    from collections.abc import Callable

    # A Tantivy clause on the thread field -> a clause for the whole thread (engine.Searcher)
    ThreadExpander = Callable[[str], str]

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
# a time of day (syntax 4): to the minute or the second, in UTC or the zone it names
TIME_VALUE = re.compile(
    r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2})?(?:Z|[+-]\d{2}:\d{2})?$", re.IGNORECASE
)

SORTS = ("-date", "date", "score")


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
OPERATOR = re.compile(r"(AND|OR|NOT|&&|\|\||!)(?=[\s()]|$)", re.IGNORECASE)
OPERATOR_CAPS = re.compile(OPERATOR.pattern)  # syntax 1: operator words in capitals only

# The version of the query language.  A legal hold records the version it was placed under and
# is read under it at every retention run, so that a change of the language never changes what
# a hold protects (docs/compliance.md).  Bump it, and keep the old reading behind `syntax <`
# tests, whenever a query that was valid would mean something else, or stop being valid:
#   1  AND, OR, NOT are operators in capitals only; `and`, `or`, `not` are words
#   2  and/or/not are operators in any case, as in notmuch and mu
#   3  a NOT without a right side, and && or || inside a word, are errors (`cats NOT OR dogs`
#      was `cats OR -dogs`; `cats||dogs` the phrase "cats dogs")
#   4  a date is YYYY[-MM[-DD]] or a time YYYY-MM-DDTHH:MM[:SS][Z|+HH:MM], which spans its
#      minute or second; any other ISO form is an error (`20240305`, `2024-W10` and
#      `2024-03-05T10` were one second, `2024-03-05+05:00` the second 05:00:00 of that day);
#      `word~N` is an error: ~N takes a quoted phrase (`invoice~1` was the phrase "invoice 1");
#      an address field's `"Name <addr>"` is the address (it was the phrase of its words)
SYNTAX = 4
MAX_DEPTH = 100  # nested parentheses; translating recurses once per level


def _push(
    query: str, pos: int, length: int, stack: list[str | None], field: str | None = None
) -> None:
    """Open a group with ``field``, or else the enclosing group's (inside field:( ... ) a plain
    group keeps the field: subject:(a (b OR c))); deeper than MAX_DEPTH is an error, not a
    RecursionError later."""
    if len(stack) >= MAX_DEPTH:
        raise _fail(
            query, pos, length, f"parentheses nested more than {MAX_DEPTH} deep (flatten the query)"
        )
    stack.append(field if field is not None else (stack[-1] if stack else None))


def _lex(query: str, syntax: int = SYNTAX) -> list[_Tok]:
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
            _push(query, i, 1, field_stack)
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
                _push(query, start, i + 1 - start, field_stack)
                i += 1
                continue
        # an operator word?  In any case, as notmuch (Xapian's FLAG_BOOLEAN_ANY_CASE) and mu
        # read them: `cats or dogs`; the word itself is quoted ("or")
        m = (OPERATOR if syntax >= 2 else OPERATOR_CAPS).match(query, i)
        if m and not modifier:
            op = {"&&": "AND", "||": "OR", "!": "NOT"}.get(m.group(1), m.group(1).upper())
            toks.append(_Tok("op", start, m.end(), op))
            i = m.end()
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
                _push(query, start, i + 1 - start, field_stack, fname)
                i += 1
                continue
        elif field_stack and field_stack[-1] is not None:
            fname = field_stack[-1]
        tok = _Tok("term", start, i, field=fname, modifier=modifier)
        if i < n and query[i] == '"':
            tok.value, i = _quoted(query, i)
            tok.quoted = True
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
            if fname and FIELD_ALIASES[fname][0] == "msgid" and query.startswith("<", i):
                # mid:<paren(1)@odd.test>: a bracketed id is one token, parentheses and spaces
                # included (<abc def@example.com>, as broken mailers write them)
                close = query.find(">", i)
                if close != -1 and "<" not in query[i + 1 : close]:
                    j = close + 1
            while j < n and not query[j].isspace() and query[j] not in SPECIAL:
                j += 1
            tok.value = query[i:j]
            if syntax >= 3 and (fname is None or FIELD_ALIASES[fname][0] in ("text", "addr")):
                _no_operator_inside(query, i, tok.value)
            i = j
            if not tok.value and fname is not None:
                raise _fail(query, start, i - start, "a field needs a value")
        tok.end = i
        tok.text = query[start:i]
        toks.append(tok)
    return toks


def _no_operator_inside(query: str, start: int, word: str) -> None:
    """``cats||dogs`` searched for the phrase "cats dogs".  An operator is a word of its own
    (notmuch/Xapian, and Lucene, never read one inside a word), yet taking ``||`` there for
    punctuation would make ``cats||dogs`` mean something else than ``cats || dogs``: it is an
    error saying how to write either."""
    at = min((p for p in (word.find("&&"), word.find("||")) if p != -1), default=-1)
    if at != -1:
        op = word[at : at + 2]
        raise _fail(
            query,
            start + at,
            2,
            f"{op} inside a word: put spaces around it to make it an operator "
            f'(a {op} b), or quote the text to search for it ("{word}")',
        )


def _quoted(query: str, start: int) -> tuple[str, int]:
    """The value of the double-quoted string at ``start``, and where it ends.

    ``\\"`` is a quote and ``\\\\`` a backslash (a Message-ID may hold either); any other
    backslash is itself, so that a typed Windows path needs no doubling.
    """
    out: list[str] = []
    j, n = start + 1, len(query)
    while j < n:
        c = query[j]
        if c == "\\" and j + 1 < n and query[j + 1] in '"\\':
            out.append(query[j + 1])
            j += 2
        elif c == '"':
            return "".join(out), j + 1
        else:
            out.append(c)
            j += 1
    raise _fail(query, start, n - start, 'unclosed double quote (add a closing ")')


# -- translation -------------------------------------------------------------------------------


def quote(value: str) -> str:
    """A Tantivy phrase; its grammar escapes quotes and backslashes as ours does."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _regex_escape(value: str) -> str:
    """``value`` as literal text inside a Tantivy ``/regex/``.  ``<`` and ``>`` stay bare: Rust's
    regex reads ``\\<`` and ``\\>`` as word boundaries, which Tantivy refuses (``mid:a<*``)."""
    return re.sub(r"([\\.+*?()|\[\]{}^$#&~/\"-])", r"\\\1", value)


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


# The first and last instants a datetime holds.  A query date's end past 9999-12-31 (or a
# timestamp whose zone moves it past either end) is taken as the last (first) instant: both lie
# far beyond the indexed bounds (ix.DATE_MIN, ix.DATE_MAX), where `_date_range` clamps them.
EARLIEST = datetime.min.replace(tzinfo=UTC)
LATEST = datetime.max.replace(tzinfo=UTC)


def _day_start(query: str, tok: _Tok, value: str, syntax: int) -> tuple[datetime, datetime]:
    """The [start, end) instants of a date value: a year, a month, a day, or a time."""
    m = DATE_VALUE.match(value)
    try:
        if m:
            return _calendar_span(int(m.group(1)), m.group(2), m.group(3))
        if syntax < 4:  # any ISO form Python reads, as one second (a hold's old reading)
            return _instant(datetime.fromisoformat(value), timedelta(seconds=1))
        tm = TIME_VALUE.match(value)
        if tm:
            step = timedelta(seconds=1 if tm.group(1) else 60)  # the second or minute typed
            return _instant(datetime.fromisoformat(value.upper()), step)
    except ValueError:
        pass
    raise _fail(
        query,
        tok.pos,
        tok.end - tok.pos,
        "expected a date YYYY, YYYY-MM or YYYY-MM-DD, or a time YYYY-MM-DDTHH:MM[:SS]"
        " (in UTC, or with Z or an offset such as +05:00)",
    )


def _calendar_span(year: int, month: str | None, day: str | None) -> tuple[datetime, datetime]:
    """The year, month or day as [start, end); ValueError if there is no such day."""
    if month is None:
        return datetime(year, 1, 1, tzinfo=UTC), _month_after(year, 12)
    mon = int(month)
    if day is None:
        return datetime(year, mon, 1, tzinfo=UTC), _month_after(year, mon)
    start = datetime(year, mon, int(day), tzinfo=UTC)
    return start, _later(start, timedelta(days=1))


def _instant(stamp: datetime, step: timedelta) -> tuple[datetime, datetime]:
    """[stamp, stamp + step) in UTC; a time without a zone is UTC."""
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    try:
        stamp = stamp.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00 is before the first instant
        stamp = EARLIEST if stamp.year == 1 else LATEST
    return stamp, _later(stamp, step)


def _month_after(year: int, month: int) -> datetime:
    """The first instant after ``month`` of ``year`` (after December 9999: ``LATEST``)."""
    if month == 12:
        return LATEST if year == datetime.max.year else datetime(year + 1, 1, 1, tzinfo=UTC)
    return datetime(year, month + 1, 1, tzinfo=UTC)


def _later(moment: datetime, step: timedelta) -> datetime:
    try:
        return moment + step
    except OverflowError:  # 9999-12-31 has no next day
        return LATEST


def iso_utc(moment: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SSZ``; not strftime, whose %Y writes the year 1 as "1" on glibc."""
    t = moment
    return f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}Z"


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


def _date_clause(query: str, tok: _Tok, kind: str, syntax: int) -> str:
    lo, hi = _date_bounds(query, tok, kind, syntax)
    return _date_range(lo, hi)


def _date_bounds(
    query: str, tok: _Tok, kind: str, syntax: int
) -> tuple[datetime | None, datetime | None]:
    """The query's dates as [lo, hi): inclusive start, exclusive end, None where open."""
    value = tok.value.strip()

    def span(text: str) -> tuple[datetime, datetime]:
        return _day_start(query, tok, text, syntax)

    if kind == "after":
        return span(value)[0], None
    if kind == "before":
        return None, span(value)[0]
    rm = RANGE.match(value)
    if rm:
        low, high = rm.group(2), rm.group(3)
        lo = None if low == "*" else span(low)[rm.group(1) == "{"]
        hi = None if high == "*" else span(high)[rm.group(4) == "]"]
        return lo, hi
    cm = COMPARE.match(value)
    if cm:
        start, end = span(cm.group(2))
        return {
            ">": (end, None),
            ">=": (start, None),
            "<": (None, start),
            "<=": (None, end),
        }[cm.group(1)]
    if value.startswith(("[", "{")):
        raise _fail(query, tok.pos, tok.end - tok.pos, "expected a range [FROM TO UNTIL]")
    return span(value)


def _date_range(lo: datetime | None, hi: datetime | None) -> str:
    """A Tantivy range for [lo, hi), clamped as the indexed dates are (``ix.DATE_MIN`` and
    ``ix.DATE_MAX``): a message dated 1500 is indexed at DATE_MIN, so a range that ends at
    or before DATE_MIN takes DATE_MIN in (`date:<1600` finds it, as would a hold on it), and
    one that starts after DATE_MAX starts at DATE_MAX.  Such a range cannot tell the
    clamped dates apart: it finds every message dated outside the bound it lies beyond.
    Open at both ends (`before:3000`), it starts at DATE_MIN: Tantivy's ``[* TO *]`` matches
    no document at all, so a hold on `before:3000` protected nothing."""
    low = "*" if lo is None else iso_utc(min(max(lo, ix.DATE_MIN), ix.DATE_MAX))
    if hi is not None and hi <= ix.DATE_MIN:
        return f"date:[{low} TO {iso_utc(ix.DATE_MIN)}]"
    if hi is None or hi > ix.DATE_MAX:
        return f"date:[{iso_utc(ix.DATE_MIN) if lo is None else low} TO *]"
    return f"date:[{low} TO {iso_utc(hi)}}}"


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
    phrase = quote(" ".join(words))
    return _any([f"{f}:{phrase}*" for f in fields])


def _term_clause(query: str, tok: _Tok, syntax: int) -> str:
    value = tok.value
    kind, target = FIELD_ALIASES[tok.field] if tok.field else ("text", "")
    span = (tok.pos, tok.end - tok.pos)
    if tok.field is None and not tok.quoted and value == "*":
        return "*"
    if kind in ("date", "after", "before"):
        return _date_clause(query, tok, kind, syntax)
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
        return f"id:{quote(digest)}" if len(digest) == 64 else f"id:/{digest}.*/"
    if kind in ("msgid", "raw"):
        # one token as indexed (ix.exact): without the joiners normalize() put in CJK runs
        raw = ix.exact(value).strip()
        if kind == "msgid":
            # as parse stores ids: whitespace runs inside are one space (<abc  def@x>)
            star = "*" if not tok.quoted and raw.endswith("*") else ""  # <id>*: a prefix of id
            raw = " ".join(raw.removesuffix(star).removeprefix("<").removesuffix(">").split())
            raw += star
            if not raw.strip("<>* "):
                raise _fail(query, *span, "message-id: needs an id (as in message-id:<abc@x>)")
        if not tok.quoted and raw.endswith("*"):
            return f"{target}:/{_regex_escape(raw[:-1])}.*/"
        return f"{target}:{quote(raw)}"
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
        if syntax >= 4:
            _no_fuzzy(query, tok, value)
    if kind == "addr" and not value.endswith("*") and not suffix:
        clause = _address_clause(value, fields, boost, syntax)
        if clause is not None:
            return clause
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
        texts = [text]
        if kind == "addr" and not suffix and DOMAIN.match(value):
            texts = [ix.normalize(d) for d in domain_forms(ix.exact(value).lower())]
        return _any([f"{f}:{quote(t)}{suffix}{boost}" for t in texts for f in fields])
    return f"{quote(text)}{suffix}{boost}"


# a mailbox as show and search print it, `<addr>` or `Name <addr>`: the address is inside
ANGLE_ADDRESS = re.compile(r"^[^<>]*<([^<>\s]+)>$")
SENTENCE_END = ".,;:"  # after an address pasted from a sentence or a list: not part of it


def _addresses(value: str) -> list[str]:
    """The addresses an address value names, each one token as indexed (like a Message-ID),
    in every spelling of its domain (`domain_forms`).  Beside the value as typed: the address
    inside ``<...>``, as show and search print a mailbox (``<a@b>``, ``Name <a@b>``), and the
    address without the punctuation after it, pasted from a sentence or a list (``a@b.``,
    ``a@b,``, ``a@b;``, ``a@b:``).  The value
    as typed stays among them (an indexed address may end in a dot): what such a query, or a
    hold on it, found before is found still."""
    typed = ix.exact(value).lower()
    forms = [typed, typed.strip().rstrip(SENTENCE_END)]
    for form in forms[:2]:
        angle = ANGLE_ADDRESS.match(form)
        if angle:
            forms += [angle.group(1), angle.group(1).rstrip(SENTENCE_END)]
    found: list[str] = []
    for form in dict.fromkeys(forms):
        if ADDRESS.match(form):
            local, _, domain = form.rpartition("@")
            found += [f"{local}@{d}" for d in domain_forms(domain)]
    return list(dict.fromkeys(found))


def _address_clause(value: str, fields: tuple[str, ...], boost: str, syntax: int) -> str | None:
    """The exact-address clause of ``from:`` ... ``recipient:``, or None for words."""
    addresses = _addresses(value)
    if not addresses:
        return None
    clause = _any([f"{f}_addr:{quote(a)}{boost}" for a in addresses for f in fields])
    if syntax < 4 and not ADDRESS.match(value):
        # `from:"Name <addr>"` was the phrase of its words until language 4: a hold placed then
        # keeps finding what the phrase finds, and the address's mail besides
        phrase = quote(ix.normalize(value))
        clause = _any([clause, *(f"{f}:{phrase}{boost}" for f in fields)])
    return clause


FUZZY = re.compile(r"~\d*(?:\.\d+)?$")


def _no_fuzzy(query: str, tok: _Tok, value: str) -> None:
    """``invoice~1`` was the phrase "invoice 1" (the tokenizer drops the ~), and found nothing,
    where mu, notmuch's users and Lucene read ``~N`` on a word as fuzzy search.  There is none
    here: it is an error that says what ``~N`` does take."""
    m = FUZZY.search(value)
    if m is None:
        return
    at = tok.pos + tok.text.rfind("~")
    raise _fail(
        query,
        at,
        len(m.group(0)),
        f'~N applies to a quoted phrase ("a b"~2); there is no fuzzy search: drop it, use a '
        f'prefix (word*), or quote the text to search for it ("{value}")',
    )


DOMAIN = re.compile(r"^[^@\s.]+(\.[^@\s.]+)+$")


def domain_forms(domain: str) -> list[str]:
    """``domain`` and its other spellings as an internationalised domain name: the xn--
    (punycode) form of a Unicode one and the Unicode form of an xn-- one, so that
    ``from:anna@bücher.example`` finds mail that wrote ``xn--bcher-kva.example`` and the
    other way round.  A message keeps the form it was sent with; both are asked for.  Each
    label is converted on its own, as IDNA 2008 does (``straße`` stays ``straße``; IDNA 2003's
    ``strasse`` is asked for too).  A label that is not valid punycode stays as it is."""
    if domain.isascii() and "xn--" not in domain:
        return [domain]
    labels = domain.split(".")
    converted: list[str] = []
    for label in labels:
        try:
            if label.startswith("xn--"):
                converted.append(label[4:].encode("ascii").decode("punycode"))
            elif not label.isascii():
                converted.append("xn--" + label.encode("punycode").decode("ascii"))
            else:
                converted.append(label)
        except (UnicodeError, ValueError):
            converted.append(label)
    try:  # IDNA 2003 (the stdlib codec): maps ß to ss and folds case on the way
        idna2003 = domain.encode("idna").decode("ascii")
    except UnicodeError:
        idna2003 = domain
    return list(dict.fromkeys([domain, ".".join(converted), idna2003]))


def translate(query: str, syntax: int = SYNTAX) -> str:
    """Rewrite a mailvault query into Tantivy's query language (raises QuerySyntaxError)."""
    return translate_with_words(query, syntax=syntax)[0]


def translate_with_words(
    query: str, threads: ThreadExpander | None = None, *, syntax: int = SYNTAX
) -> tuple[str, list[str]]:
    """The Tantivy query, and the folded words the body snippet should show.

    ``threads`` rewrites each ``thread:`` clause into one for the whole thread: which replies
    belong to it is known only from the index (see ``engine.Searcher``).  ``syntax``: the
    version of the query language to read it in (a hold's, see SYNTAX).
    """
    if not 1 <= syntax <= SYNTAX:
        raise QuerySyntaxError(
            f"query language version {syntax} is unknown to this mailvault (it reads 1 to "
            f"{SYNTAX}); use the mailvault that wrote it"
        )
    query = ix.normalize(query)
    if not query.strip():
        raise QuerySyntaxError("invalid query: it is empty (use '*' to match every message)")
    toks = _lex(query, syntax)
    out, _ = _group(query, toks, 0, top=True, threads=threads, syntax=syntax)
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


def _word(op: _Tok) -> str:
    """The hint for an operator word that was meant as a word (`or` alone)."""
    return f' (to search for the word, quote it: "{op.text.lower()}")' if op.text.isalpha() else ""


def _group(
    query: str,
    toks: list[_Tok],
    i: int,
    *,
    top: bool,
    threads: ThreadExpander | None = None,
    syntax: int = SYNTAX,
) -> tuple[str, int]:
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
                if dangling is not None and dangling.text == "NOT":
                    i += 1
                    continue  # NOT NOT: the first NOT still waits for its right side
            elif dangling is not None and dangling.text == "NOT" and syntax >= 3:
                # `cats NOT OR dogs` was `cats OR -dogs`: the NOT took the clause after the OR
                raise _fail(
                    query,
                    dangling.pos,
                    dangling.end - dangling.pos,
                    f"NOT needs a right side before {tok.text}{_word(dangling)}",
                )
            elif dangling is not None and dangling.text in ("AND", "OR"):
                raise _fail(
                    query,
                    tok.pos,
                    tok.end - tok.pos,
                    f"{tok.text} right after {dangling.text}: a word is missing between them",
                )
            elif not runs[-1]:
                raise _fail(
                    query, tok.pos, tok.end - tok.pos, f"{tok.text} needs a left side{_word(tok)}"
                )
            elif tok.text == "OR":
                runs.append([])
            dangling = tok
            i += 1
            continue
        if tok.kind == "(":
            inner, i = _group(query, toks, i + 1, top=False, threads=threads, syntax=syntax)
            if i >= len(toks) or toks[i].kind != ")":
                raise _fail(query, tok.pos, tok.end - tok.pos, "unclosed parenthesis (add a ')')")
            clause = f"({inner})"
        else:
            clause = _term_clause(query, tok, syntax)
            if threads is not None and tok.field == "thread":
                clause = threads(clause)
        negated = negate_next != (tok.modifier == "-")
        runs[-1].append((clause, negated))
        negate_next = False
        dangling = None
        i += 1
    if dangling is not None:
        raise _fail(
            query,
            dangling.pos,
            dangling.end - dangling.pos,
            f"{dangling.text} needs a right side{_word(dangling)}",
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
