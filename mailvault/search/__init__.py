"""`mailvault search`: the query language, its translation to Tantivy's, and execution.

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

The package, one module per step:

    query    the query language, lexed and translated into Tantivy's
    engine   the translated query run against the index: counts, hits, snippets
    output   hits printed for a terminal, as ids or as JSON lines
    command  `mailvault search` itself, and its click-free fast entry point

Only tantivy, the standard library, ``mailvault.errors`` and ``mailvault.index`` are imported:
no sqlite-utils, no parser, no PDF library.  A hit's printed fields come from the index's
stored fields, never from the catalog.
"""

from mailvault.search.command import fast_main, run
from mailvault.search.engine import Hit, Results, Searcher, count, search
from mailvault.search.output import clean, format_hit, iter_lines
from mailvault.search.query import translate

__all__ = [
    "Hit",
    "Results",
    "Searcher",
    "clean",
    "count",
    "fast_main",
    "format_hit",
    "iter_lines",
    "run",
    "search",
    "translate",
]
