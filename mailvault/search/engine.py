"""Running a translated query against the index: counts, pages of hits, body snippets.

A hit's printed fields come from the index's stored fields, never from the catalog.
"""

from __future__ import annotations

import contextlib
import os
import re
from datetime import UTC, datetime

import tantivy

from mailvault import index as ix
from mailvault.errors import QuerySyntaxError, SearchError, UsageError
from mailvault.search.query import SORTS, SYNTAX, iso_utc, quote, translate_with_words

# Neither `typing` nor `pathlib` is imported at run time: they are a few ms of every `mailvault
# search` start-up (paths are handled with os.path here; callers may pass Path objects).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path
    from typing import Any

SNIPPET_CHARS = 160
# --limit and --offset: more than any index holds (tantivy's document ids are 32-bit) is a
# typing error; within this, the limit is cut to the index's size before Tantivy allocates.
MAX_PAGE = 2**32 - 1
# Ids per walk of the id term dictionary in ``Searcher.ids`` (about: the walk splits by the
# leading hex digits of the sha256, which spread evenly).
ID_PAGE = 8192
# Hits read from the index at a time as a ``Page`` is printed: what a search holds rendered.
HIT_BATCH = 256


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
            "date": iso_utc(self.date) if self.date else None,
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

    def __init__(
        self, index_dir: str | os.PathLike[str], query: str, *, syntax: int = SYNTAX
    ) -> None:
        """``syntax``: the query language version to read ``query`` in (a legal hold's)."""
        self.query_text = query
        self.index_dir = index_dir
        self.path = os.fspath(index_dir)
        self._opened: list[tantivy.Index] = []  # opened by the first thread: term, or below
        self.translated, self.words = translate_with_words(
            query, threads=self._whole_thread, syntax=syntax
        )
        self.index = self._open()
        self.query = self._parse(query)
        with ix.reading(self.path):
            self.searcher = self.index.searcher()
        self.matched: int | None = None  # every hit's number, counted by the last ``page``

    def _open(self) -> tantivy.Index:
        if not self._opened:
            self._opened.append(ix.open_for_search(self.index_dir))
        return self._opened[0]

    def _whole_thread(self, clause: str) -> str:
        """``clause`` (``thread:"<root>"``) widened to every reply below the root, at any depth.

        A message's ``thread`` term is the first id of its References, else its In-Reply-To
        (JWZ's order), as far as that message alone tells.  A reply that names only its parent
        (In-Reply-To without References, or a References cut short) therefore carries its
        parent's id, not the root's; so the messages whose thread is the id of a message already
        found are added, round after round, until no new id turns up.  Done at query time, it
        does not matter in which order the messages arrived.  Costs one search per level of
        such replies, plus one stored-document read per message of the thread.
        """
        index = self._open()
        found: set[str] = set()
        step = clause
        with ix.reading(self.path):
            searcher = index.searcher()
        while True:
            try:
                query = index.parse_query(step, default_field_names=["thread"], allow_regexes=True)
            except ValueError:  # the whole query's parse (_parse) then says what is wrong
                return clause
            new: set[str] = set()
            with ix.reading(self.path):
                total = int(getattr(searcher.search(query, 1, count=True), "count", 0) or 0)
                for _, address in searcher.search(query, total, count=False).hits if total else ():
                    mid = searcher.doc(address).get_first("message_id")
                    if mid and mid not in found:
                        new.add(mid)
            if not new:
                break
            found |= new
            step = _one_of("thread", new)
        return f"({clause} OR {_one_of('thread', found)})" if found else clause

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
        with ix.reading(self.path):
            result = self.searcher.search(self.query, 1, count=True)
        return int(getattr(result, "count", 0) or 0)

    def ids(self) -> Iterator[list[str]]:
        """Every hit's id (sha256), in batches of about ``ID_PAGE``, in no particular order.

        For callers that select messages (query export, legal holds, retention): read from the
        ``id`` field's term dictionary, each term kept if a live document matching the query
        holds it, so no stored document (with its body) is read and memory does not grow with
        the number of hits.  The walk is split by the ids' first hex digits into as many runs
        as ``ID_PAGE`` asks for.
        """
        with self._running():
            total = int(getattr(self.searcher.search(self.query, 1, count=True), "count", 0) or 0)
        seen = 0
        for terms in self.id_counts(total):
            seen += sum(n for _, n in terms)
            yield [term for term, _ in terms]
        if seen != total:  # an id that is no sha256, one held by two live documents, or none
            raise ix.damaged(self.path, f"its ids name {seen} documents, the query finds {total}")

    def id_counts(self, total: int) -> Iterator[list[tuple[str, int]]]:
        """The hits' ids with how many live hits hold each, walked as ``ids`` does for a query
        with ``total`` hits; not checked against it (a hit with no id, or one that is no
        sha256, is in no batch: the caller tells such hits apart by that)."""
        for prefix in _prefixes(total):
            with self._running():
                terms = self.searcher.terms_with_prefix("id", prefix, filter_query=self.query)
            if terms:
                yield terms

    def page(
        self, *, limit: int = 50, offset: int = 0, sort: str = "-date", snippets: bool = True
    ) -> list[Hit]:
        return list(self.find(limit=limit, offset=offset, sort=sort, snippets=snippets))

    def find(
        self, *, limit: int = 50, offset: int = 0, sort: str = "-date", snippets: bool = True
    ) -> Page:
        """One page of hits, found now and read from the index as the ``Page`` is iterated."""
        check_page(limit, offset, sort)
        num_docs = self.searcher.num_docs
        if offset >= num_docs:
            # past the last hit; and Tantivy would allocate offset + limit slots
            return Page(self, [], scored=False, snippets=snippets)
        limit = num_docs if limit == 0 else min(limit, num_docs)
        with self._running():
            if sort == "score":
                result = self.searcher.search(self.query, limit, count=True, offset=offset)
            else:
                result = self.searcher.search(
                    self.query,
                    limit,
                    count=True,
                    order_by_field="date",
                    offset=offset,
                    order=tantivy.Order.Desc if sort == "-date" else tantivy.Order.Asc,
                )
        # counted on the same pass (a full page says how many it left out; a second search
        # for the number cost as much again)
        self.matched = int(getattr(result, "count", 0) or 0)
        return Page(self, result.hits, scored=sort == "score", snippets=snippets)

    @contextlib.contextmanager
    def _running(self) -> Iterator[None]:
        """Tantivy running the query: damage, or a query it could not run, as one line."""
        try:
            yield
        except ValueError as exc:
            if ix.is_damage(exc):
                raise ix.damaged(self.path, exc) from None
            raise QuerySyntaxError(f"invalid query {self.query_text!r}: {exc}") from None
        except BaseException as exc:  # a panic in tantivy is no Exception
            if not ix.is_panic(exc):
                raise
            raise ix.damaged(self.path, exc) from None


def check_page(limit: int, offset: int, sort: str) -> None:
    """Refuse a page the command line cannot mean (a usage error, exit 2)."""
    if sort not in SORTS:
        raise SearchError(f"unknown sort {sort!r}; use one of {', '.join(SORTS)}")
    for name, value in (("--limit", limit), ("--offset", offset)):
        if not 0 <= value <= MAX_PAGE:
            every = "; --limit 0 prints every hit" if name == "--limit" else ""
            raise UsageError(f"{name} {value} is out of range: give 0 to {MAX_PAGE}{every}")


class Page:
    """The hits of one search, read from the index's stored fields (and snippets made) as the
    page is iterated, ``HIT_BATCH`` at a time, in the order Tantivy found them.

    So a page of every hit (``--limit 0``) over a large vault is printed as it is read: only
    Tantivy's (score or date, address) pair per hit is held, never every hit's fields and
    snippet at once.
    """

    def __init__(self, owner: Searcher, found: list[Any], *, scored: bool, snippets: bool) -> None:
        self.owner, self.found, self.scored, self.snippets = owner, found, scored, snippets
        self._generator: tantivy.SnippetGenerator | None = None

    def __len__(self) -> int:
        return len(self.found)

    def __iter__(self) -> Iterator[Hit]:
        for batch in self.batches():
            yield from batch

    def batches(self) -> Iterator[list[Hit]]:
        """The hits in lists of up to ``HIT_BATCH``, each read when asked for."""
        for start in range(0, len(self.found), HIT_BATCH):
            with ix.reading(self.owner.path):  # the stored fields, the snippets' terms
                batch = self._read(self.found[start : start + HIT_BATCH], first=not start)
            yield batch

    def ids(self) -> Iterator[list[str]]:
        """The hits' ids in lists of up to ``HIT_BATCH``, in page order, with no snippet made."""
        searcher = self.owner.searcher
        for start in range(0, len(self.found), HIT_BATCH):
            with ix.reading(self.owner.path):
                batch = [
                    str(_first(searcher.doc(address), "id"))
                    for _, address in self.found[start : start + HIT_BATCH]
                ]
            yield batch

    def _read(self, found: list[Any], *, first: bool) -> list[Hit]:
        owner = self.owner
        if first and self.snippets and owner.words:
            self._generator = tantivy.SnippetGenerator.create(
                owner.searcher, owner.query, owner.index.schema, "body"
            )
            self._generator.set_max_num_chars(SNIPPET_CHARS)
        hits = []
        for key, address in found:
            doc = owner.searcher.doc(address)
            hit = _hit(doc, float(key) if self.scored else None)
            if self.snippets:
                hit.snippet, hit.highlights = _snippet(self._generator, doc, owner.words)
            hits.append(hit)
        return hits


def _prefixes(total: int) -> Iterator[str]:
    """Leading hex digits that cut ``total`` random sha256 ids into runs of about ``ID_PAGE``."""
    return ix.id_prefixes(total, ID_PAGE)


def _one_of(field: str, values: set[str]) -> str:
    """A Tantivy term-set clause: ``field`` is any of ``values`` (one term lookup each)."""
    return f"{field}: IN [{' '.join(quote(v) for v in sorted(values))}]"


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
    body = ix.preview(doc)
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
