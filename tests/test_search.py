"""Search results checked against what the generator says it wrote, never against the index.

One vault for the module: ``COUNT`` generated messages (seeded) plus hand-made ones for HTML,
PDF, accents, CJK and address exactness.  Every expected set is computed from the generator's
records (or the hand-made messages' known content) with this file's own tokenizing.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from mailvault.errors import QuerySyntaxError
from mailvault.indexer import catch_up
from mailvault.search import Searcher, count, translate
from mailvault.testkit.generator import GeneratedMessage
from mailvault.vault import Vault
from tests.test_index_support import (
    HTML_TAG,
    HTML_WORD,
    PDF_WORD,
    build_vault,
    fold,
    generated,
    special_messages,
    tokens,
)

Corpus = tuple[Vault, list[GeneratedMessage], dict[str, str], dict[str, str]]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    messages = generated()
    vault, digests, named = build_vault(
        tmp_path_factory.mktemp("search") / "vault", messages, special_messages()
    )
    report = catch_up(vault)
    assert report.indexed == len(messages) + len(named)
    by_digest = dict(zip(digests, range(len(digests)), strict=True))
    assert len(by_digest) == len(messages)  # the generator never repeats a message
    return vault, messages, dict(zip([m.message_id for m in messages], digests, strict=True)), named


def hits(corpus: Corpus, query: str, **kw: object) -> list[str]:
    vault = corpus[0]
    return [
        h.id
        for h in Searcher(vault.index_path, query).page(limit=0, snippets=False, **kw)  # type: ignore[arg-type]
    ]


def generated_hits(corpus: Corpus, query: str) -> set[str]:
    """Hits among the generated messages only (the hand-made ones are tested by name)."""
    named = set(corpus[3].values())
    return set(hits(corpus, query)) - named


def expect(corpus: Corpus, pred: Callable[..., bool], *args: object) -> set[str]:
    """The generated messages for which ``pred(message, *args)`` holds."""
    _, messages, digest_of, _ = corpus
    return {digest_of[m.message_id] for m in messages if pred(m, *args)}


def forwarded(corpus: Corpus) -> set[str]:
    """Messages with a message/rfc822 part: its body is part of the searchable body too."""
    return expect(corpus, lambda m: any(a.content_type == "message/rfc822" for a in m.attachments))


def body_of(m: GeneratedMessage) -> str:
    """The text a message's body field holds: its text body, and for an HTML alternative the
    HTML rendered as text, which adds the <title> (the generator writes the subject there)."""
    return m.body_text + ("\n" + m.subject if m.html else "")


def sample(items: Iterable[str], k: int, seed: int) -> list[str]:
    pool = sorted(set(items))
    return random.Random(seed).sample(pool, min(k, len(pool)))


# -- addresses ---------------------------------------------------------------------------------


def test_from_address_matches_exactly(corpus: Corpus) -> None:
    senders = sample((m.from_addr for m in corpus[1]), 12, 1)
    for addr in senders:
        assert generated_hits(corpus, f"from:{addr}") == expect(
            corpus, lambda m, a: m.from_addr == a, addr
        ), addr
        assert generated_hits(corpus, f"from:{addr.upper()}") == expect(
            corpus, lambda m, a: m.from_addr == a, addr
        )


def test_to_and_cc_addresses(corpus: Corpus) -> None:
    for addr in sample((a for m in corpus[1] for a in m.to), 10, 2):
        assert generated_hits(corpus, f"to:{addr}") == expect(corpus, lambda m, a: a in m.to, addr)
    for addr in sample((a for m in corpus[1] for a in m.cc), 10, 3):
        assert generated_hits(corpus, f"cc:{addr}") == expect(corpus, lambda m, a: a in m.cc, addr)
        assert generated_hits(corpus, f"recipient:{addr}") == expect(
            corpus, lambda m, a: a in m.cc or a in m.to, addr
        )


def test_exact_address_is_not_a_substring_match(corpus: Corpus) -> None:
    named = corpus[3]
    assert set(hits(corpus, "from:bob@example.com")) == {named["exact"]}
    assert set(hits(corpus, 'from:"Bob@Example.com"')) == {named["exact"]}
    assert set(hits(corpus, "from:xbob@example.com")) == {named["longer"]}
    assert set(hits(corpus, "from:bob")) == {named["exact"], named["longer"], named["subdomain"]}
    assert named["subdomain"] in hits(corpus, "from:evil.example")


def test_from_display_name_words(corpus: Corpus) -> None:
    names = sample((m.from_name for m in corpus[1] if m.from_name.isascii() and m.from_name), 6, 4)
    for name in names:
        last = name.split()[-1].strip('"').strip(",")
        folded = fold(last)
        want = expect(
            corpus,
            lambda m, w: w in tokens(m.from_name) or w in tokens(m.from_addr),
            folded,
        )
        assert generated_hits(corpus, f"from:{last}") == want, last


# -- subject, body, phrases ------------------------------------------------------------------


def test_subject_words(corpus: Corpus) -> None:
    words = sample(
        (w for m in corpus[1] for w in tokens(m.subject) if w.isascii() and w.isalpha()), 15, 5
    )
    for word in words:
        assert generated_hits(corpus, f"subject:{word}") == expect(
            corpus, lambda m, w: w in tokens(m.subject), word
        ), word


def test_body_words(corpus: Corpus) -> None:
    fwd = forwarded(corpus)
    words = sample((w for m in corpus[1] for w in m.words if w.isascii()), 25, 6)
    for word in words:
        want = expect(corpus, lambda m, w: w in tokens(body_of(m)), word)
        got = generated_hits(corpus, f"body:{word}")
        assert want <= got, word
        assert got - want <= fwd, word  # extra hits only where a forwarded message says it


def test_marker_words_find_exactly_their_message(corpus: Corpus) -> None:
    _, messages, digest_of, _ = corpus
    for m in messages[::7]:
        assert hits(corpus, m.marker) == [digest_of[m.message_id]]
        assert hits(corpus, f"body:{m.marker}") == [digest_of[m.message_id]]
        assert hits(corpus, f"subject:{m.marker}") == []


def test_non_latin_body_words(corpus: Corpus) -> None:
    fwd = forwarded(corpus)
    for lang, k in (("ru", 6), ("de", 6), ("fr", 6)):
        words = sample((w for m in corpus[1] if m.language == lang for w in m.words), k, 7)
        for word in words:
            folded = fold(word)
            want = expect(corpus, lambda m, w: w in tokens(body_of(m)), folded)
            got = generated_hits(corpus, f"body:{word}")
            assert want <= got and got - want <= fwd, word


def test_cjk_words_match_as_character_runs(corpus: Corpus) -> None:
    """CJK is indexed per character; a word is a phrase of them (a substring match)."""
    fwd = forwarded(corpus)
    words = sample((w for m in corpus[1] if m.language == "ja" for w in m.words), 6, 8)
    assert words
    for word in words:
        want = expect(corpus, lambda m, w: w in body_of(m).lower(), word)
        got = generated_hits(corpus, f"body:{word}")
        assert want <= got and got - want <= fwd, word


def test_phrases(corpus: Corpus) -> None:
    fwd = forwarded(corpus)
    rng = random.Random(9)
    checked = 0
    for m in rng.sample(corpus[1], 40):
        toks = [t for t in tokens(body_of(m)) if t.isascii()]
        if len(toks) < 10:
            continue
        i = rng.randrange(len(toks) - 2)
        phrase = " ".join(toks[i : i + 3])
        want = expect(corpus, lambda g, p: p in f" {' '.join(tokens(body_of(g)))} ", f" {phrase} ")
        got = generated_hits(corpus, f'body:"{phrase}"')
        assert want <= got and got - want <= fwd, phrase
        checked += 1
    assert checked >= 15


def test_unfielded_words_search_subject_body_addresses_and_attachment_text(
    corpus: Corpus,
) -> None:
    _, messages, digest_of, _ = corpus
    m = next(m for m in messages if m.cc)
    mine = digest_of[m.message_id]
    local = m.cc[0].split("@")[0].split(".")[0]
    assert mine in hits(corpus, local)
    assert mine in hits(corpus, tokens(m.subject)[-1])
    named = corpus[3]
    assert hits(corpus, PDF_WORD) == [named["pdf"]]


# -- HTML and PDF ----------------------------------------------------------------------------


def test_word_only_in_html_part_is_found_but_not_tag_names(corpus: Corpus) -> None:
    named = corpus[3]
    assert hits(corpus, HTML_WORD) == [named["html"]]
    assert hits(corpus, f"body:{HTML_WORD}") == [named["html"]]
    assert hits(corpus, HTML_TAG) == []
    assert hits(corpus, "class") == [] or named["html"] not in hits(corpus, "body:class")


def test_word_only_inside_a_pdf_attachment_is_found(corpus: Corpus) -> None:
    named = corpus[3]
    assert hits(corpus, PDF_WORD) == [named["pdf"]]
    assert hits(corpus, f"attachment-text:{PDF_WORD}") == [named["pdf"]]
    assert hits(corpus, f"body:{PDF_WORD}") == []
    assert hits(corpus, "attachment:numbers.pdf") == [named["pdf"]]


def test_a_windows_path_in_a_quoted_file_name_keeps_its_backslashes(corpus: Corpus) -> None:
    """Every backslash of a quoted file name was dropped as RFC 2045 quoting: a Windows
    client's raw "C:\\Users\\ann\\quarterly.xls" became "C:Usersannquarterly.xls", and a
    search for the file's name did not find it."""
    winpath = corpus[3]["winpath"]
    assert hits(corpus, "attachment:quarterly.xls") == [winpath]
    assert hits(corpus, 'filename:"users ann quarterly"') == [winpath]


def test_attachment_names(corpus: Corpus) -> None:
    names = sample((a.filename for m in corpus[1] for a in m.attachments if a.filename), 10, 10)
    for name in names:
        want = expect(corpus, lambda m, n: any(a.filename == n for a in m.attachments), name)
        got = generated_hits(corpus, f'attachment:"{name}"')
        assert want <= got, name
        stem = tokens(name)
        assert got == expect(
            corpus,
            lambda m, s: any(" ".join(s) in " ".join(tokens(a.filename)) for a in m.attachments),
            stem,
        ), name


# -- folding ---------------------------------------------------------------------------------


def test_case_and_accents_fold(corpus: Corpus) -> None:
    named = corpus[3]
    for query in ("cafe creme", "CAFÉ CRÈME", "Strasse", "straße", "elephant", "ÉLÉPHANT"):
        assert named["accents"] in hits(corpus, query), query
    assert named["cjk"] in hits(corpus, "unicode")  # Ünïcödé
    assert named["cjk"] in hits(corpus, "ПРИВЕТ")
    # Devanagari is split at vowel signs on both sides: a word is a phrase of its pieces
    assert hits(corpus, "हिन्दी") == [named["cjk"]]
    assert hits(corpus, "भाषा हिन्दी") == [named["cjk"]]


def test_cjk_substrings(corpus: Corpus) -> None:
    named = corpus[3]
    assert named["cjk"] in hits(corpus, "東京")
    assert named["cjk"] in hits(corpus, "subject:タワー")
    assert named["cjk"] in hits(corpus, "京タ")  # documented: a substring of a run matches
    assert named["cjk"] not in hits(corpus, "東タ")


# -- message-id, list, thread ------------------------------------------------------------------


def test_message_id(corpus: Corpus) -> None:
    _, messages, digest_of, _ = corpus
    for m in messages[::30]:
        for form in (m.message_id, f"<{m.message_id}>"):
            assert hits(corpus, f'message-id:"{form}"') == [digest_of[m.message_id]]
            assert hits(corpus, f"message-id:{form}") == [digest_of[m.message_id]]


def test_list_and_thread(corpus: Corpus) -> None:
    lists = sorted({m.list_id for m in corpus[1] if m.list_id})
    assert lists
    for list_id in lists:
        assert generated_hits(corpus, f"list:{list_id}") == expect(
            corpus, lambda m, lid: m.list_id == lid, list_id
        )
    replies = [m for m in corpus[1] if m.references]
    for m in replies[:5]:
        root = m.references[0]
        assert corpus[2][m.message_id] in hits(corpus, f"thread:{root}")


# -- dates and sizes -------------------------------------------------------------------------


def _on(m: GeneratedMessage, prefix: str) -> bool:
    return m.date.astimezone(UTC).isoformat().startswith(prefix)


def test_date_forms(corpus: Corpus) -> None:
    day = sorted({m.date.strftime("%Y-%m-%d") for m in corpus[1]})[17]
    cases = {
        "date:2023": lambda m: _on(m, "2023"),
        "date:2024-03": lambda m: _on(m, "2024-03"),
        f"date:{day}": lambda m: _on(m, day),
        "after:2025-06-01": lambda m: m.date >= datetime(2025, 6, 1, tzinfo=UTC),
        "before:2022-04-01": lambda m: m.date < datetime(2022, 4, 1, tzinfo=UTC),
        "after:2024-01-01 before:2024-04-01": lambda m: _on(m, "2024-0") and m.date.month <= 3,
        "date:[2024-01-01 TO 2024-03-31]": lambda m: _on(m, "2024-0") and m.date.month <= 3,
        "date:{2024-01-01 TO 2024-03-31}": lambda m: (
            _on(m, "2024-0")
            and m.date.month <= 3
            and not _on(m, "2024-01-01")
            and not _on(m, "2024-03-31")
        ),
        "date:[2025-11 TO *]": lambda m: m.date >= datetime(2025, 11, 1, tzinfo=UTC),
        "date:>2025-10": lambda m: m.date >= datetime(2025, 11, 1, tzinfo=UTC),
        "date:<=2022-02": lambda m: m.date < datetime(2022, 3, 1, tzinfo=UTC),
    }
    for query, pred in cases.items():
        want = expect(corpus, pred)
        assert want, query
        assert generated_hits(corpus, query) == want, query


def test_a_time_spans_the_minute_or_the_second_typed(corpus: Corpus) -> None:
    """`date:2024-03-05T10:07` was the single second 10:07:00, so it missed a message sent
    at 10:07:31 (and `date:>...T10:07` took it in); a time spans what it names."""
    sent = next(m.date.astimezone(UTC) for m in corpus[1] if m.date.second)
    minute, second = sent.strftime("%Y-%m-%dT%H:%M"), sent.strftime("%Y-%m-%dT%H:%M:%S")
    local = sent.astimezone(timezone(timedelta(hours=5, minutes=30))).strftime("%Y-%m-%dT%H:%M")

    def within(m: GeneratedMessage, start: datetime, seconds: int) -> bool:
        return start <= m.date < start + timedelta(seconds=seconds)

    whole_minute = sent.replace(second=0)
    cases = {
        f"date:{minute}": lambda m: within(m, whole_minute, 60),
        f"date:{minute}Z": lambda m: within(m, whole_minute, 60),
        f"date:{local}+05:30": lambda m: within(m, whole_minute, 60),
        f"date:{second}": lambda m: within(m, sent, 1),
        f"date:>{minute}": lambda m: m.date >= whole_minute + timedelta(minutes=1),
        f"date:<={minute}": lambda m: m.date < whole_minute + timedelta(minutes=1),
        f"after:{second}": lambda m: m.date >= sent,
    }
    for query, pred in cases.items():
        want = expect(corpus, pred)
        assert want, query
        assert generated_hits(corpus, query) == want, query


@pytest.mark.parametrize(
    ("query", "old"),
    [
        ("date:20240305", "date:[2024-03-05T00:00:00Z TO 2024-03-05T00:00:01Z}"),
        ("date:2024-W10", "date:[2024-03-04T00:00:00Z TO 2024-03-04T00:00:01Z}"),
        ("date:2024-03-05T10", "date:[2024-03-05T10:00:00Z TO 2024-03-05T10:00:01Z}"),
        ("date:2024-03-05T10:00:00.5", "date:[2024-03-05T10:00:00Z TO 2024-03-05T10:00:01Z}"),
        ("date:[20240301 TO 20240331]", "date:[2024-03-01T00:00:00Z TO 2024-03-31T00:00:01Z}"),
        ("after:2024-03-05+05:00", "date:[2024-03-05T05:00:00Z TO *]"),
        ("before:20240305", "date:[* TO 2024-03-05T00:00:00Z}"),
    ],
)
def test_a_date_in_another_iso_form_is_an_error(query: str, old: str) -> None:
    """`datetime.fromisoformat` took any ISO form it reads: `date:20240305` was the single
    second 2024-03-05T00:00:00 (no hits where `date:2024-03-05` had some) and
    `after:2024-03-05+05:00` meant 05:00 UTC.  They are errors now; a hold placed before
    (query language 3) keeps the reading it was placed with."""
    with pytest.raises(QuerySyntaxError, match=re.escape("expected a date YYYY, YYYY-MM or")):
        translate(query)
    assert translate(query, syntax=3) == old


def test_size_forms(corpus: Corpus) -> None:
    cases = {
        "size:>20k": lambda m: m.size > 20 * 1024,
        "size:>=20480": lambda m: m.size >= 20480,
        "size:<10k": lambda m: m.size < 10 * 1024,
        "size:<=5K": lambda m: m.size <= 5 * 1024,
        "size:>0.05M": lambda m: m.size > 0.05 * 1024 * 1024,
        "size:[8k TO 16k]": lambda m: 8192 <= m.size <= 16384,
    }
    for query, pred in cases.items():
        want = expect(corpus, pred)
        assert want, query
        assert generated_hits(corpus, query) == want, query


def test_has_attachment(corpus: Corpus) -> None:
    assert generated_hits(corpus, "has:attachment") == expect(corpus, lambda m: bool(m.attachments))
    assert generated_hits(corpus, "-has:attachment") == expect(corpus, lambda m: not m.attachments)


def test_a_bare_star_in_a_field_means_any_value(corpus: Corpus) -> None:
    assert generated_hits(corpus, "cc:*") == expect(corpus, lambda m: bool(m.cc))
    assert generated_hits(corpus, "-cc:*") == expect(corpus, lambda m: not m.cc)
    assert generated_hits(corpus, "attachment:*") == generated_hits(corpus, "has:attachment")


# -- boolean logic, prefixes, sorting, paging --------------------------------------------------


def test_boolean_operators(corpus: Corpus) -> None:
    a, b = "subject:re", "has:attachment"
    sa, sb = generated_hits(corpus, a), generated_hits(corpus, b)
    assert sa and sb
    assert generated_hits(corpus, f"{a} {b}") == sa & sb
    assert generated_hits(corpus, f"{a} AND {b}") == sa & sb
    assert generated_hits(corpus, f"{a} && {b}") == sa & sb
    assert generated_hits(corpus, f"{a} OR {b}") == sa | sb
    assert generated_hits(corpus, f"{a} AND NOT {b}") == sa - sb
    assert generated_hits(corpus, f"{a} -{b}") == sa - sb
    assert generated_hits(corpus, f"+{a} -{b}") == sa - sb
    assert generated_hits(corpus, f"NOT {b}") == expect(corpus, lambda m: True) - sb
    c = "date:2024"
    sc = generated_hits(corpus, c)
    # AND binds tighter than OR; parentheses group.
    assert generated_hits(corpus, f"{a} {b} OR {c}") == (sa & sb) | sc
    assert generated_hits(corpus, f"{a} ({b} OR {c})") == sa & (sb | sc)
    assert generated_hits(corpus, f"-({b} OR {c}) {a}") == sa - sb - sc


def test_prefix_wildcards(corpus: Corpus) -> None:
    fwd = forwarded(corpus)
    for prefix in ("invoi", "meet", "cal", "sch"):
        want = expect(corpus, lambda m, p: any(t.startswith(p) for t in tokens(body_of(m))), prefix)
        got = generated_hits(corpus, f"body:{prefix}*")
        assert want and want <= got and got - want <= fwd, prefix
    want = expect(corpus, lambda m: any(t.startswith("re") for t in tokens(m.subject)))
    assert generated_hits(corpus, "subject:re*") == want


def test_sort_limit_offset_and_count(corpus: Corpus) -> None:
    vault = corpus[0]
    query = "has:attachment"
    total = count(vault.index_path, query)
    searcher = Searcher(vault.index_path, query)
    newest = searcher.page(limit=0, sort="-date", snippets=False)
    assert len(newest) == total
    dates = [h.date or datetime.min.replace(tzinfo=UTC) for h in newest]
    assert dates == sorted(dates, reverse=True)
    oldest = searcher.page(limit=0, sort="date", snippets=False)
    assert [h.date or datetime.min.replace(tzinfo=UTC) for h in oldest] == sorted(dates)
    page2 = searcher.page(limit=10, offset=10, sort="-date", snippets=False)
    assert [h.id for h in page2] == [h.id for h in newest[10:20]]
    scored = searcher.page(limit=5, sort="score", snippets=False)
    assert all(h.score is not None for h in scored)
    scores = [h.score for h in Searcher(vault.index_path, "invoice").page(limit=20, sort="score")]
    assert scores == sorted(scores, reverse=True)  # type: ignore[type-var]


def test_stored_fields_come_back(corpus: Corpus) -> None:
    _, messages, digest_of, _ = corpus
    m = next(m for m in messages if m.from_name and m.from_name.isascii())
    (hit,) = Searcher(corpus[0].index_path, f"message-id:{m.message_id}").page()
    assert hit.id == digest_of[m.message_id]
    assert hit.message_id == m.message_id
    assert hit.date == m.date.replace(microsecond=0)
    assert hit.from_ == f"{m.from_name.strip(chr(34))} <{m.from_addr}>" or m.from_addr in hit.from_
    assert hit.subject == m.subject
    assert hit.size == m.size
    assert all(any(a in t for t in hit.to) for a in m.to)


def test_snippet_highlights_the_term(corpus: Corpus) -> None:
    _, messages, _, _ = corpus
    m = messages[5]
    (hit,) = Searcher(corpus[0].index_path, m.marker).page()
    assert hit.highlights
    start, end = hit.highlights[0]
    assert hit.snippet[start:end].lower() == m.marker
    assert "\n" not in hit.snippet


# -- the translation and its errors -----------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "column", "token"),
    [
        ("foo:bar", 1, "foo:"),
        ("hello wrld:x", 7, "wrld:"),
        ('subject:"unclosed', 9, '"unclosed'),
        ("(a OR b", 1, "("),
        ("(", 1, "("),
        ("from:(", 1, "from:("),
        ("from:(a", 1, "from:("),
        ("from:()", 1, "from:("),
        ("a b)", 4, ")"),
        ("OR a", 1, "OR"),
        ("a AND", 3, "AND"),
        ("size:>lots", 1, "size:>lots"),
        ("size:>99999999999999999999999G", 1, "size:>99999999999999999999999G"),
        ("a && || b", 6, "||"),
        ("a OR AND b", 6, "AND"),
        ("--", 1, "--"),
        ("-", 1, "-"),
        ("mid:<>", 1, "mid:<>"),
        ("word^abc", 1, "word^abc"),
        ("fo*o", 1, "fo*o"),
        ("*foo", 1, "*foo"),
        ('"a b"~x', 6, "~"),
        ("invoice~1", 8, "~1"),
        ("a subject:b~2^3", 12, "~2"),
        ("date:2024-13", 1, "date:2024-13"),
        ("after:yesterday", 1, "after:yesterday"),
        ("has:pdf", 1, "has:pdf"),
        ("id:xyz", 1, "id:xyz"),
        ("date:[2024 TO", 6, "[2024 TO"),
        ("東京 foo:x", 4, "foo:"),
        ("a ||", 3, "||"),
    ],
)
def test_invalid_queries_point_at_the_bad_token(query: str, column: int, token: str) -> None:
    with pytest.raises(QuerySyntaxError) as info:
        translate(query)
    message = str(info.value)
    assert f"at column {column}" in message or "at the end" in message
    assert repr(token)[1:-1] in message
    assert "\n" not in message


def test_empty_query_is_an_error() -> None:
    with pytest.raises(QuerySyntaxError, match="empty"):
        translate("   ")


def test_translation_examples() -> None:
    assert translate("from:Alice@Example.com") == 'from_addr:"alice@example.com"'
    assert translate("date:2024-03") == "date:[2024-03-01T00:00:00Z TO 2024-04-01T00:00:00Z}"
    assert translate("size:>1M") == "size:>1048576"
    assert translate("from:*@example.com") == translate("from:example.com")
    assert translate("has:attachment") == "has_attachment:true"
    assert translate("message-id:<a@b>") == 'message_id:"a@b"'
    assert translate("a b OR c") == '("a" AND "b") OR "c"'
    assert translate("NOT a") == '(* AND -"a")'


def test_queries_on_a_vault_without_index(tmp_path: Path) -> None:
    import shutil

    vault, _, _ = build_vault(tmp_path / "v", [])
    shutil.rmtree(vault.index_path)  # init makes an empty one: this is a vault that lost it
    from mailvault.errors import SearchError

    with pytest.raises(SearchError, match="mailvault index"):
        Searcher(vault.index_path, "x")


def test_plain_snippet_marks_every_query_word_and_defers_what_it_cannot() -> None:
    from mailvault.search.engine import SNIPPET_CHARS, _plain_snippet

    body = "intro " * 30 + "The Parking\n\tlot is near the parking  garage. " + "tail " * 60
    snippet = _plain_snippet(body, body.find("Parking"), ["parking", "garage"])
    assert snippet is not None
    text, ranges = snippet
    assert len(text) <= SNIPPET_CHARS and "\n" not in text and "  " not in text
    assert [text[a:b] for a, b in ranges] == ["Parking", "parking", "garage"]
    assert _plain_snippet(body, body.find("Parking"), ["parki"]) is None  # a prefix: Tantivy
    cjk = "報告 明日。 学生 料\u2060理 を 資料"
    assert _plain_snippet(cjk, cjk.find("料"), ["料", "理"]) is None  # split per character


# -- keyword fields in any normal form ----------------------------------------------------------

NFD_ID = "cafe\u0301-notes@example.test"  # é decomposed


def _raw_message(mid: str, to: str, subject: str) -> bytes:
    return (
        f"From: Sender <sender@example.com>\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Date: Mon, 05 Feb 2024 10:00:00 +0000\r\nMessage-ID: <{mid}>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhello\r\n"
    ).encode()


def test_keyword_fields_match_cjk_and_any_normal_form(tmp_path: Path) -> None:
    """account:, mid:, thread: and exact addresses were indexed raw but queried after
    normalize() (NFC, word joiners in CJK runs), so CJK or decomposed values never matched."""
    import unicodedata

    from tests.test_index_support import import_messages

    vault, _, _ = build_vault(tmp_path / "v", [])
    (cjk,) = import_messages(
        vault, [_raw_message("東京会議@example.jp", "用户@例子.广告", "cjk")], account="東京支社"
    )
    (nfd,) = import_messages(
        vault,
        [_raw_message(NFD_ID, "Zu\u0308rich@example.test", "nfd")],
        account="Zu\u0308rich",
        uidl_prefix="n",
    )
    catch_up(vault)

    def found(query: str) -> set[str]:
        return {h.id for h in Searcher(vault.index_path, query).page(limit=0, snippets=False)}

    assert found("mid:<東京会議@example.jp>") == {cjk}
    assert found('message-id:"東京会議@example.jp"') == {cjk}
    assert found("thread:<東京会議@example.jp>") == {cjk}
    assert found("mid:東京*") == {cjk}
    assert found("account:東京支社") == {cjk}
    assert found("to:用户@例子.广告") == {cjk}
    for form in ("NFC", "NFD"):
        assert found(unicodedata.normalize(form, f"mid:<{NFD_ID}>")) == {nfd}, form
        assert found(unicodedata.normalize(form, "account:Zu\u0308rich")) == {nfd}, form
        assert found(unicodedata.normalize(form, "to:zu\u0308rich@example.test")) == {nfd}, form
    assert found("account:東京") == set()  # still one exact token, not a substring


def test_a_group_inside_a_field_group_keeps_the_field() -> None:
    """A plain ( inside field:( ... ) once dropped the field: subject:(report (draft OR final))
    searched draft and final in every field, and its negation dropped hits."""
    inner = "(subject:draft OR subject:final)"
    assert translate("subject:(report (draft OR final))") == translate(f"(subject:report {inner})")
    assert translate("-subject:(report AND (draft OR final))") == translate(
        f"-(subject:report AND {inner})"
    )
    assert translate("subject:(a (b (c OR from:d)))") == translate(
        "(subject:a (subject:b (subject:c OR from:d)))"
    )
    assert translate("subject:(a) (b)") == translate("(subject:a) (b)")  # only inside the group


def test_deep_nesting_is_a_query_error_not_a_crash() -> None:
    """~1000 nested parentheses raised RecursionError."""
    assert translate("(" * 100 + "a" + ")" * 100) == "(" * 100 + '"a"' + ")" * 100
    for opening in ("(", "subject:(", "-("):
        with pytest.raises(QuerySyntaxError, match="nested more than 100 deep") as info:
            translate(opening * 1000 + "a" + ")" * 1000)
        assert "\n" not in str(info.value)


def test_huge_limit_and_offset_are_capped_or_refused(corpus: Corpus) -> None:
    """A limit of 10**9 made Tantivy allocate that many slots (out of memory, rc 134); 2**64-1
    panicked, an offset of 10**20 raised OverflowError."""
    from mailvault.errors import UsageError
    from mailvault.search.engine import MAX_PAGE

    searcher = Searcher(corpus[0].index_path, "*")
    every = [h.id for h in searcher.page(limit=0, snippets=False)]
    assert [h.id for h in searcher.page(limit=10**9, snippets=False)] == every
    assert [h.id for h in searcher.page(limit=MAX_PAGE, offset=3, snippets=False)] == every[3:]
    assert searcher.page(limit=5, offset=MAX_PAGE, snippets=False) == []
    for kw in ({"limit": 2**64 - 1}, {"offset": 10**12}, {"offset": 10**20}, {"limit": -1}):
        with pytest.raises(UsageError, match="out of range"):
            searcher.page(snippets=False, **kw)  # type: ignore[arg-type]


def test_message_ids_with_parentheses_quotes_and_backslashes(tmp_path: Path) -> None:
    """mid:<paren(1)@odd.test> found nothing unless quoted whole (the lexer ended the term at
    the parenthesis), and an id with " or \\ could not be searched at all (_quote made them
    spaces)."""
    from tests.test_index_support import import_messages

    ids = ["paren(1)@odd.test", 'quo"te@odd.test', "back\\slash@odd.test"]
    vault, _, _ = build_vault(tmp_path / "v", [])
    paren, quote, back = import_messages(
        vault, [_raw_message(i, "c@example.com", "x") for i in ids]
    )
    catch_up(vault)

    def found(query: str) -> set[str]:
        return {h.id for h in Searcher(vault.index_path, query).page(limit=0, snippets=False)}

    for query in (
        "mid:<paren(1)@odd.test>",
        "(mid:<paren(1)@odd.test>)",
        'mid:"paren(1)@odd.test"',
    ):
        assert found(query) == {paren}, query
    assert found('mid:(<paren(1)@odd.test> OR <quo"te@odd.test>)') == {paren, quote}
    assert found('mid:<quo"te@odd.test>') == {quote}
    assert found(r'mid:"<quo\"te@odd.test>"') == {quote}
    assert found(r"mid:<back\slash@odd.test>") == {back}
    assert found(r'mid:"back\\slash@odd.test"') == {back}
    assert translate(r'subject:"a \"b\" c\\d"') == r'subject:"a \"b\" c\\d"'
    with pytest.raises(QuerySyntaxError, match="unclosed double quote"):
        translate('subject:"a\\"')


def _reply(mid: str, subject: str, headers: str = "") -> bytes:
    return (
        f"From: Sender <sender@example.com>\r\nTo: c@example.com\r\nSubject: {subject}\r\n"
        f"Date: Mon, 05 Feb 2024 10:00:00 +0000\r\nMessage-ID: <{mid}>\r\n{headers}"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhello\r\n"
    ).encode()


def test_in_reply_to_only_chains_join_the_thread(tmp_path: Path) -> None:
    """A <- B (References: A) <- C (In-Reply-To: B only) <- D (In-Reply-To: C only): C and D
    got B and C as their thread root, so thread:<A> found only A and B.  Replies are imported
    children first, so no order of arrival is assumed."""
    from tests.test_index_support import import_messages

    vault, _, _ = build_vault(tmp_path / "v", [])
    d, c, b, a, other = import_messages(
        vault,
        [
            _reply("d@t", "Re: x", "In-Reply-To: <c@t>\r\n"),
            _reply("c@t", "Re: x", "In-Reply-To: <b@t>\r\n"),
            _reply("b@t", "Re: x", "In-Reply-To: <a@t>\r\nReferences: <a@t>\r\n"),
            _reply("a@t", "x"),
            _reply("other@t", "y", "In-Reply-To: <elsewhere@t>\r\n"),
        ],
    )
    catch_up(vault)

    def found(query: str) -> set[str]:
        return {h.id for h in Searcher(vault.index_path, query).page(limit=0, snippets=False)}

    assert found("thread:<a@t>") == {a, b, c, d}
    assert found("thread:a@t -mid:b@t") == {a, c, d}
    assert found("thread:<a@t> OR thread:<elsewhere@t>") == {a, b, c, d, other}
    assert found("thread:a*") == {a, b, c, d}
    assert found("thread:<c@t>") == {d}  # below c, as the root of its own replies
    assert Searcher(vault.index_path, "thread:<a@t>").count() == 4


def test_angle_brackets_in_a_prefix_are_literal(tmp_path: Path) -> None:
    """mid:<root@x>*, thread:a<* and account:a<* were refused with Tantivy's "Invalid regex:
    Empty match operators": < and > were escaped, and Rust's regex reads \\< and \\> as word
    boundaries.  They are literal now, and <id>* is a prefix of the id, as <id> is the id."""
    from tests.test_index_support import import_messages

    vault, _, _ = build_vault(tmp_path / "v", [])
    a, b = import_messages(
        vault, [_reply("a@t", "x"), _reply("b@t", "Re: x", "References: <a@t>\r\n")]
    )
    catch_up(vault)

    def found(query: str) -> set[str]:
        return {h.id for h in Searcher(vault.index_path, query).page(limit=0, snippets=False)}

    assert translate("account:a<*") == "account:/a<.*/"
    assert translate("mid:<a@t>*") == translate("mid:a@t*") == "message_id:/a@t.*/"
    assert found("mid:<a@t>*") == found("mid:<a@*") == {a}
    assert found("thread:<a@t>*") == {a, b}
    for query in ("thread:a<*", "account:a<*", "mid:a>b*"):
        assert found(query) == set(), query


def test_operators_in_any_case_as_notmuch_reads_them() -> None:
    """`cats or dogs` searched for the three words (the "or" too), so it found only messages
    with all three; notmuch (Xapian's FLAG_BOOLEAN_ANY_CASE) and mu read and/or/not in any
    case as operators.  A quoted "or" is the word."""
    assert translate("cats or dogs") == translate("cats OR dogs")
    assert translate("cats Or dogs and not birds") == translate("cats OR dogs AND NOT birds")
    assert translate("subject:(a or b)") == translate("subject:(a OR b)")
    assert translate('rock "and" roll') == '("rock" AND "and" AND "roll")'
    assert translate("android order notice") == '("android" AND "order" AND "notice")'
    with pytest.raises(QuerySyntaxError, match=r"OR needs a left side.*quote it"):
        translate("or cats")


@pytest.mark.parametrize(
    ("query", "column", "message"),
    [
        ("cats NOT OR dogs", 6, "NOT needs a right side before OR"),
        ("cats not and dogs", 6, "NOT needs a right side before AND"),
        ("cats NOT NOT OR dogs", 6, "NOT needs a right side before OR"),
        ("cats ! || dogs", 6, "NOT needs a right side before OR"),
        ("cats||dogs", 5, "|| inside a word: put spaces around it"),
        ("subject:cats&&dogs", 13, "&& inside a word: put spaces around it"),
        ("cats ||dogs", 6, "|| inside a word"),
    ],
)
def test_a_dangling_not_or_an_operator_inside_a_word_is_an_error(
    query: str, column: int, message: str
) -> None:
    """`cats NOT OR dogs` became `cats OR -dogs` (the NOT took the clause after the OR), and
    `cats||dogs` searched for the phrase "cats dogs", not cats OR dogs."""
    with pytest.raises(QuerySyntaxError, match=re.escape(message)) as info:
        translate(query)
    assert f"at column {column} " in str(info.value)


def test_operator_words_and_symbols_still_combine() -> None:
    assert translate("cats NOT NOT dogs") == translate("cats dogs")
    assert translate("cats AND NOT dogs") == translate("cats -dogs") == '("cats" AND -"dogs")'
    assert translate("cats || dogs") == translate("cats OR dogs")
    assert translate('"cats||dogs"') == '"cats||dogs"'  # quoted: the text
    assert translate("AT&T") == '"AT&T"'  # one & is punctuation, as ever
    assert translate("mid:<a||b@x>") == 'message_id:"a||b@x"'  # an id is not words


def test_each_query_language_version_keeps_its_reading() -> None:
    """A legal hold is read in the version it was placed under (compliance.py): version 1
    had operator words in capitals only, version 2 let a NOT wait past an operator and read
    || inside a word as text; the current version refuses both."""
    from mailvault.search.query import SYNTAX

    assert translate("x not y", syntax=1) == translate('x "not" y')
    assert translate("x not y", syntax=2) == translate("x NOT y") == '("x" AND -"y")'
    assert translate("x NOT y", syntax=1) == translate("x NOT y")
    assert translate("cats NOT OR dogs", syntax=2) == '"cats" OR (* AND -"dogs")'
    assert translate("cats||dogs", syntax=2) == '"cats||dogs"'
    for unknown in (0, SYNTAX + 1):
        with pytest.raises(QuerySyntaxError, match=f"query language version {unknown} is unknown"):
            translate("x", syntax=unknown)


@pytest.mark.parametrize(
    ("query", "old"),
    [
        ("invoice~1", '"invoice~1"'),
        ("invoice~", '"invoice~"'),
        ("invoice~0.8", '"invoice~0.8"'),
        ("subject:invoice~1", 'subject:"invoice~1"'),
        ("-body:invoice~2^2", '(* AND -body:"invoice~2"^2)'),
        ("from:alice@example.com~1", 'from_addr:"alice@example.com~1"'),
    ],
)
def test_a_tilde_after_a_word_is_an_error(query: str, old: str) -> None:
    """`invoice~1` was the phrase "invoice 1": no hits and no error where `invoice` has
    many, and where mu or Lucene users mean fuzzy search.  ~N takes a quoted phrase; after a
    word it is an error (a hold placed in language 3 keeps the phrase it meant)."""
    with pytest.raises(QuerySyntaxError, match=re.escape("~N applies to a quoted phrase")):
        translate(query)
    assert translate(query, syntax=3) == old


def test_a_tilde_elsewhere_is_still_text_or_a_phrase_slop() -> None:
    assert translate('"quarterly report"~2') == '"quarterly report"~2'
    assert translate('subject:"invoice"~1') == 'subject:"invoice"~1'
    assert translate('"invoice~1"') == '"invoice~1"'  # quoted: the text
    assert translate("a~b") == '"a~b"'
    assert translate("attachment:REPORT~1.PDF") == 'attachment:"REPORT~1.PDF"'
    assert translate("mid:<a~1@x>") == 'message_id:"a~1@x"'  # ids and accounts are not words
    assert translate("account:legacy~2") == 'account:"legacy~2"'


def _header_message(headers: str, mid: str) -> bytes:
    return (
        f"{headers}Subject: angle {mid}\r\nMessage-ID: <{mid}@test.example>\r\n"
        "Date: Mon, 1 Jan 2024 10:00:00 +0000\r\n\r\nHello.\r\n"
    ).encode()


def test_an_address_in_angle_brackets_or_before_a_dot_is_the_address(tmp_path: Path) -> None:
    """`show` and `search` print a mailbox as `Name <addr>`, so `<addr>` is what gets pasted:
    `from:<alice@example.com>` was the exact address with its brackets, which no message has,
    and found nothing (exit 1, no error), as did `cc:<...>`, `bcc:<...>`, `recipient:<...>`,
    a hold placed that way (it protected nothing) and `from:alice@example.com.` with the dot
    of the sentence it came from."""
    vault, _, named = build_vault(
        tmp_path / "vault",
        [],
        {
            "named": _header_message(
                "From: Alice Example <alice@example.com>\r\nTo: Victim <victim@corp.test>\r\n"
                "Cc: Carol <carol@corp.test>\r\nBcc: secret@corp.test\r\n",
                "n",
            ),
            "bare": _header_message("From: alice@example.com\r\nTo: x@corp.test\r\n", "b"),
            "spoof": _header_message(
                'From: "Alice alice@example.com" <attacker@evil.example>\r\nTo: x@corp.test\r\n',
                "s",
            ),
            "dotted": _header_message("From: dot@example.com.\r\nTo: x@corp.test\r\n", "d"),
        },
    )
    catch_up(vault)

    def found(query: str, syntax: int | None = None) -> set[str]:
        kw = {} if syntax is None else {"syntax": syntax}
        searcher = Searcher(vault.index_path, query, **kw)  # type: ignore[arg-type]
        return {h.id for h in searcher.page(limit=0, snippets=False)}

    alice = {named["named"], named["bare"]}
    for query in (
        "from:alice@example.com",
        "from:<alice@example.com>",
        "from:<ALICE@example.com>^2",
        'from:"<alice@example.com>"',
        "from:alice@example.com.",
        "from:alice@example.com,",
        "from:alice@example.com;",
        "from:<alice@example.com>.",
        "from:<alice@example.com>,",
        "from:Alice<alice@example.com>",
        # a whole mailbox, quoted: its address, whatever name a message gives it
        'from:"Alice <alice@example.com>"',
        'from:"Alice Example <alice@example.com>"',
        'from:"\\"alice@example.com\\" <alice@example.com>"',
    ):
        assert found(query) == alice, query
        assert found(query, syntax=3) >= alice, query  # a hold placed before finds them too
    for query in ("to:<victim@corp.test>", "cc:<carol@corp.test>", "bcc:<secret@corp.test>"):
        assert found(query) == {named["named"]}, query
    assert found("recipient:<victim@corp.test>") == {named["named"]}
    assert found('recipient:"Carol <carol@corp.test>"') == {named["named"]}
    # the spoof spells the address in its name: it is found by its own address only
    assert found('from:"<attacker@evil.example>"') == {named["spoof"]}
    # an address as indexed with a dot after it is still found by the dot
    assert found("from:dot@example.com.") == {named["dotted"]}
    assert found("from:dot@example.com") == set()
    # language 3 read a quoted mailbox as the phrase of its words (which the spoof's name
    # holds): a hold placed then finds that still, and the address's mail besides
    assert found('from:"Alice <alice@example.com>"', syntax=3) == alice | {named["spoof"]}


def test_an_internationalised_domain_matches_in_both_its_forms(tmp_path: Path) -> None:
    """Mail from one domain name carries it as Unicode (RFC 6532) or as xn-- (punycode): an
    investigator typing either form finds both, by address and by domain."""

    def message(sender: str, mid: str) -> bytes:
        return (
            f"From: Anna <{sender}>\r\nTo: b@example.com\r\nSubject: idn {mid}\r\n"
            f"Message-ID: <{mid}@test.example>\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n"
            "\r\nHello.\r\n"
        ).encode()

    vault, _, named = build_vault(
        tmp_path / "vault",
        [],
        {
            "unicode": message("anna@bücher.example", "u"),
            "puny": message("anna@xn--bcher-kva.example", "p"),
            "other": message("anna@bucher.example", "o"),
        },
    )
    catch_up(vault)
    both = {named["unicode"], named["puny"]}

    def found(query: str) -> set[str]:
        return {h.id for h in Searcher(vault.index_path, query).page(limit=0, snippets=False)}

    for query in (
        "from:anna@bücher.example",
        "from:anna@xn--bcher-kva.example",
        "from:ANNA@XN--BCHER-KVA.EXAMPLE",
    ):
        assert found(query) == both, query
    assert found("from:anna@bucher.example") == {named["other"]}
    # a domain alone is words, accent-folded as all text is: bücher also finds bucher
    for query in ("from:bücher.example", "from:xn--bcher-kva.example"):
        assert found(query) == both | {named["other"]}, query


def test_ids_are_every_hit_in_batches(corpus: Corpus, monkeypatch: pytest.MonkeyPatch) -> None:
    """`Searcher.ids` (query export, holds, retention) gives the same messages as a page of
    every hit, split into batches of about ID_PAGE, none twice."""
    from mailvault.search import engine

    monkeypatch.setattr(engine, "ID_PAGE", 16)
    for query in ("*", "date:>2000", "nosuchwordanywhere"):
        searcher = Searcher(corpus[0].index_path, query)
        batches = list(searcher.ids())
        every = [i for batch in batches for i in batch]
        assert sorted(every) == sorted(hits(corpus, query)) and len(set(every)) == len(every)
        if len(every) > 64:
            assert len(batches) >= 8 and max(map(len, batches)) < len(every) / 4, query
