"""`mailvault search` after argument parsing, and a click-free entry point for it.

A search is the command an investigator runs most, so its start-up is kept short: this path
imports only tantivy, the standard library, ``mailvault.errors``, ``mailvault.index`` and the
modules of this package; no click, no sqlite-utils, no parser, no PDF library.
"""

from __future__ import annotations

import contextlib
import os
import sys

from mailvault._stdio import stdout_error
from mailvault._text import one_line, undecodable
from mailvault.errors import IndexDamaged, IndexOutdated
from mailvault.search.engine import MAX_PAGE, Hit, Page, Searcher, check_page
from mailvault.search.output import isatty, lines
from mailvault.search.query import SORTS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from typing import Any


def run(
    vault_root: str | os.PathLike[str],
    query: str,
    *,
    limit: int = 50,
    offset: int = 0,
    sort: str = "-date",
    mode: str = "text",
    out: Any = None,
    err: Any = None,
    exiting: bool = False,
) -> int:
    """The whole `mailvault search` after argument parsing; returns the exit code (0 hits, 1 none).

    Click-free, so that a fast entry point can call it without importing the CLI group.
    """
    try:
        return _run(vault_root, query, limit, offset, sort, mode, out, err, exiting)
    except (IndexDamaged, IndexOutdated) as exc:
        rebuilding = _while_rebuilt(vault_root, exc)
        if rebuilding is None:
            raise
        raise rebuilding from None


def _while_rebuilt(
    vault_root: str | os.PathLike[str], exc: IndexDamaged | IndexOutdated
) -> IndexDamaged | IndexOutdated | None:
    """The error for an index that could not be read while another process rebuilds it
    (`verify --repair-index`, `reindex`, a retention run): its fix, `mailvault reindex`, would
    only find the vault locked, and the rebuild under way is that fix.  None when no rebuild
    is (no ``index.new``, nor the ``index.old`` of a swap, or no writer holds the vault)."""
    from mailvault import index as ix
    from mailvault.vault import writer_of

    index = os.path.join(vault_root, "index")
    if not any(os.path.lexists(index + suffix) for suffix in (ix.NEW_SUFFIX, ix.OLD_SUFFIX)):
        return None
    writer = writer_of(vault_root)
    if writer is None:
        return None
    return type(exc)(
        f"the search index at {index} cannot be read while {writer} is rebuilding it; search "
        "again when it ends"
    )


def _run(
    vault_root: str | os.PathLike[str],
    query: str,
    limit: int,
    offset: int,
    sort: str,
    mode: str,
    out: Any,
    err: Any,
    exiting: bool,
) -> int:
    from mailvault.audit import record as audit
    from mailvault.vault import check_vault

    stream = out or sys.stdout
    notes = err or sys.stderr
    check_vault(vault_root)  # the marker and the permission checks; cheap, nothing is loaded
    searcher = Searcher(os.path.join(vault_root, "index"), query)
    missing, extra, stray = _gap(vault_root, searcher.searcher.num_docs)
    if missing or extra:
        _warn_gap(vault_root, notes, missing, extra)
    extra += stray  # documents that may be of no live message: each hit is asked about
    if mode == "count":
        n, unknown = _live_total(vault_root, searcher, extra)
        _warn_unknown(notes, unknown)
        audit(vault_root, "search", query, n, exiting=exiting, mode=mode)
        if not _write_out(stream, notes, [str(n)]):
            return 3
        return 0 if n else 1
    color = mode == "text" and isatty(stream)
    snippets = mode in ("text", "json")
    skip = 0
    if extra:
        # Purged documents still in the index, or documents of no archived message (up to
        # ``extra``), may be among the hits: take that many more from the first hit on, drop
        # them, and cut the page from the live hits, so that a page is still filled and
        # --offset counts what is shown.
        check_page(limit, offset, sort)
        wanted = 0 if limit == 0 else min(offset + limit + extra, MAX_PAGE)
        page = searcher.find(limit=wanted, offset=0, sort=sort, snippets=snippets)
        dropped = _hidden_positions(vault_root, page, notes)
        skip = offset
    else:
        page = searcher.find(limit=limit, offset=offset, sort=sort, snippets=snippets)
        dropped = set()
    live = 0 if dropped is None else max(len(page) - len(dropped) - skip, 0)
    shown = min(live, limit) if limit else live
    # The audit entry is durable before anything is shown (fail closed).
    detail = {"mode": mode, "limit": limit, "offset": offset, "sort": sort}
    audit(vault_root, "search", query, shown, exiting=exiting, **detail)
    idless = [0]
    hits = _shown_hits(vault_root, page, dropped, skip, shown, dates=snippets, idless=idless)
    if not _write_out(stream, notes, lines(hits, mode=mode, color=color)):
        return 3
    _warn_unknown(notes, idless[0])
    # purged hits and those of no archived message are neither shown nor counted
    matched = searcher.matched
    if limit and shown == limit and matched is not None:  # a full page
        _note_more(notes, _live_total(vault_root, searcher, extra, matched)[0], offset, shown)
    elif offset and not shown and (total := _live_total(vault_root, searcher, extra, matched)[0]):
        # paged past the last hit
        with contextlib.suppress(OSError):
            notes.write(
                f"mailvault: note: no hits from --offset {offset} on: the query has {total}\n"
            )
    return 0 if shown else 1


def _warn_gap(vault_root: str | os.PathLike[str], notes: Any, missing: int, extra: int) -> None:
    """Say on stderr what the index lacks and what purged mail it still holds (``index_gap``),
    and what puts it right.  While a writer holds the vault, `mailvault index` would only find
    it locked, and the writer may be the one that is putting it right (a retention run between
    its purge and its index update, a fetch about to index): the fix names it instead."""
    from mailvault.vault import writer_of

    writer = writer_of(vault_root)
    lines = []
    if extra:
        held = f"the index still holds {extra} purged message(s)"
        lines.append(
            f"{held} while {writer} is writing to the vault: they are left out of what is "
            "shown and counted until it updates the index (else run `mailvault index` when "
            "it ends)"
            if writer
            else f"{held} (a retention run was interrupted): they are left out of what is "
            "shown and counted; run `mailvault index`"
        )
    if missing:
        are = "message is" if missing == 1 else "messages are"
        fix = (
            f"{writer} is writing to the vault, and a fetch or import indexes what it stored "
            "when it ends (else run `mailvault index` then)"
            if writer
            else "run `mailvault index`"
        )
        lines.append(f"{missing} archived {are} not indexed yet: {fix}")
    with contextlib.suppress(OSError):
        notes.write("".join(f"mailvault: warning: {line}\n" for line in lines))


def _shown_hits(
    vault_root: str | os.PathLike[str],
    page: Page,
    dropped: set[int] | None,
    skip: int,
    take: int,
    *,
    dates: bool,
    idless: list[int],
) -> Iterator[Hit]:
    """The page's hits as they are read, batch by batch, without those at the ``dropped``
    positions (purged; None: every one), then ``take`` after the first ``skip`` of the rest,
    with ``real_dates`` when the output shows dates: written as read, so memory does not grow
    with --limit.  A hit with no id (a damaged index, or a document another tool wrote, which
    the counts did not give away: a lost document beside it) is left out too, and counted in
    ``idless[0]``: it is no archived message, and no line may have no id."""
    if dropped is None or not take:
        return
    start = 0
    for batch in page.batches():
        live = []
        for i, hit in enumerate(batch, start):
            if i in dropped:
                continue
            if hit.id:
                live.append(hit)
            else:
                idless[0] += 1
        start += len(batch)
        if skip >= len(live):
            skip -= len(live)
            continue
        hits, skip = live[skip : skip + take], 0
        take -= len(hits)
        if dates:
            real_dates(vault_root, hits)
        yield from hits
        if not take:
            return


def _write_out(stream: Any, notes: Any, lines: Any) -> bool:
    """Write and flush the lines; False (the error said on ``notes``) when standard output
    cannot take them (`> file` on a full disk): a search that printed nothing must not exit
    1, "no hits".  A reader that went away (`| head`) is no failure."""
    try:
        for line in lines:
            stream.write(line + "\n")
        stream.flush()
    except BrokenPipeError:  # `mailvault search x | head`
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
    except OSError as exc:
        with contextlib.suppress(OSError):
            notes.write(stdout_error(exc) + "\n")  # full (`> /dev/full`), or closed (`>&-`)
            notes.flush()
        with contextlib.suppress(OSError):  # nothing more goes there (nor at exit)
            os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
        return False
    return True


def real_dates(vault_root: str | os.PathLike[str], hits: list[Hit]) -> None:
    """Give the hits dated at a bound of the index (a Date header outside 1678..2262 is indexed
    there, ``index.DATE_MIN``/``DATE_MAX``) the date the catalog has for them: a message dated
    1500 was shown as 1678-01-01, one dated 9999 as 2262-01-01.  One catalog read, and only
    when such a hit is on the page; a hit the catalog cannot tell about keeps the bound."""
    from datetime import UTC, datetime

    from mailvault import index as ix

    bounded = {h.id: h for h in hits if h.date in (ix.DATE_MIN, ix.DATE_MAX)}
    if not bounded:
        return
    import sqlite3

    marks = ",".join("?" * len(bounded))
    try:
        db = sqlite3.connect(_read_only(vault_root), uri=True, timeout=10)
        try:
            sql = f"SELECT sha256, date FROM message_meta WHERE sha256 IN ({marks})"
            rows = db.execute(sql, list(bounded)).fetchall()
        finally:
            db.close()
    except sqlite3.Error:
        return
    for sha256, date in rows:
        try:
            bounded[sha256].date = datetime.fromisoformat(date).astimezone(UTC)
        except (TypeError, ValueError, OverflowError):
            continue


def _read_only(vault_root: str | os.PathLike[str]) -> str:
    from mailvault.vault import read_only_uri

    return read_only_uri(os.path.join(vault_root, "catalog.sqlite"))


def index_gap(vault_root: str | os.PathLike[str], num_docs: int) -> tuple[int, int]:
    """(missing, extra) of ``_gap``."""
    missing, extra, _ = _gap(vault_root, num_docs)
    return missing, extra


def _gap(vault_root: str | os.PathLike[str], num_docs: int) -> tuple[int, int, int]:
    """(how many live messages the index lacks, after `import --no-index` say; how many
    documents of purged messages it may still hold, after a retention run was stopped between
    its catalog commit and its index update), each found on its own, so that a search stays
    read-only and fast instead of silently missing the first or showing the second.

    From the index's documents and three numbers of the catalog: live, indexed and purged
    messages.  Told from live messages minus documents alone, 3000 unindexed messages beside
    2620 purged documents looked like 380 unindexed and none purged, and purged text was
    shown.  The index holds the indexed messages' documents of live mail (fewer if it lost
    some: an old backup restored); the rest are purged ones, up to how many are purged (or,
    for the instant between an index commit and the catalog's, live ones: then no hit is
    found purged and left out).  Third, the documents beyond those: of no archived message (a
    document with no id: a damaged index, or one another tool wrote into), a second document
    of one message, or (that same instant) live ones; which they are is asked hit by hit.

    Catalog rows are never deleted (a purge leaves a tombstone), so ``max(rowid)`` is their
    number, found in one b-tree descent; the purged and the indexed ones are what the one-row
    ``message_counts`` says (triggers keep it; counting rows instead scans a table: 155 ms at
    a million).  (0, 0) when the catalog cannot tell: the audit entry, written next, reports a
    broken catalog.
    """
    import sqlite3

    try:
        db = sqlite3.connect(_read_only(vault_root), uri=True, timeout=10)
        try:
            rows = db.execute("SELECT max(rowid) FROM messages").fetchone()[0] or 0
            purged, indexed = _counts(db, num_docs)
        finally:
            db.close()
    except sqlite3.Error:
        return 0, 0, 0
    live = rows - purged
    beyond = max(num_docs - indexed, 0)
    return max(live - min(indexed, num_docs), 0), min(beyond, purged), max(beyond - purged, 0)


def _counts(db: Any, num_docs: int) -> tuple[int, int]:
    """(purged, indexed) messages: the ``message_counts`` row; in a catalog no writer has
    opened since its ``indexed`` column was added (migration 8), or the row (6), counted until
    one does, unless nothing is purged: then every document is a live message's."""
    import sqlite3

    try:
        row = db.execute("SELECT purged, indexed FROM message_counts WHERE id = 1").fetchone()
        return int(row[0]), int(row[1])
    except (sqlite3.OperationalError, TypeError):
        pass
    try:
        purged = int(db.execute("SELECT purged FROM message_counts WHERE id = 1").fetchone()[0])
    except (sqlite3.OperationalError, TypeError):
        sql = "SELECT count(*) FROM messages WHERE purged_at IS NOT NULL"
        purged = int(db.execute(sql).fetchone()[0])
    if not purged:
        return 0, num_docs
    sql = "SELECT count(*) FROM message_meta WHERE indexed_at IS NOT NULL"
    return purged, int(db.execute(sql).fetchone()[0])


def _live_total(
    vault_root: str | os.PathLike[str], searcher: Searcher, extra: int, n: int | None = None
) -> tuple[int, int]:
    """The query's number of hits (``n`` when a search counted them already), without the
    purged ones and those of no archived message when the index may hold some (``extra``);
    and how many of the second kind there were."""
    if n is None:
        n = searcher.count()
    if not (extra and n):
        return n, 0
    purged, unknown = _hidden_among(vault_root, searcher, n)
    return n - purged - unknown, unknown


def _hidden_among(
    vault_root: str | os.PathLike[str], searcher: Searcher, total: int
) -> tuple[int, int]:
    """Of the ``total`` hits of ``searcher``'s query: how many are of messages the catalog
    marks purged, and how many of no message it lists (no id, or an id it has no row for);
    (0, 0) if it cannot tell.  Read from the id terms (``Searcher.id_counts``): a hit with no
    id is in none of them, so it is what the known ids do not account for."""
    import sqlite3

    purged = known = 0
    try:
        for terms, rows in _catalog_of(vault_root, searcher.id_counts(total)):
            for sha256, n in terms:
                if sha256 in rows:
                    known += n
                    purged += n if rows[sha256] else 0
    except sqlite3.Error:
        return 0, 0
    return purged, max(total - known, 0)


def _hidden_positions(
    vault_root: str | os.PathLike[str], page: Page, notes: Any
) -> set[int] | None:
    """The positions in ``page`` of hits the catalog marks purged (their documents outlived a
    retention run that was killed before it updated the index): purged text is not shown;
    and of hits of no message the catalog lists (a document with no id, or one whose id it
    has no row for: a damaged index, or documents another tool wrote into it), which no
    `show` or export could follow: not shown either, and said on ``notes``.  None when the
    catalog cannot tell which: none is shown rather than purged text.

    Found before anything is printed, for the audit entry counts what is shown; the ids are
    read a batch at a time, and only the dropped hits' positions are kept."""
    import sqlite3

    dropped: set[int] = set()
    unknown = start = 0
    try:
        for ids, rows in _catalog_of(vault_root, ([(sha, 1) for sha in b] for b in page.ids())):
            for i, (sha256, _) in enumerate(ids, start):
                if sha256 not in rows:
                    unknown += 1
                    dropped.add(i)
                elif rows[sha256]:
                    dropped.add(i)
            start += len(ids)
    except sqlite3.Error:
        return None
    _warn_unknown(notes, unknown)
    return dropped


def _catalog_of(
    vault_root: str | os.PathLike[str], batches: Iterable[list[tuple[str, int]]]
) -> Iterator[tuple[list[tuple[str, int]], dict[str, bool]]]:
    """Each batch of (id, count) with those of its ids the catalog has a row for, each mapped
    to whether it is purged, from one read-only connection; raises ``sqlite3.Error`` for the
    caller to decide what not knowing means."""
    import sqlite3

    db = sqlite3.connect(_read_only(vault_root), uri=True, timeout=10)
    try:
        for batch in batches:
            ids = [sha256 for sha256, _ in batch]
            marks = ",".join("?" * len(ids))
            sql = f"SELECT sha256, purged_at IS NOT NULL FROM messages WHERE sha256 IN ({marks})"
            yield batch, {row[0]: bool(row[1]) for row in db.execute(sql, ids)}
    finally:
        db.close()


def _warn_unknown(notes: Any, unknown: int) -> None:
    """Say on stderr that hits were left out for being of no archived message."""
    if not unknown:
        return
    are = "hit is an index document" if unknown == 1 else "hits are index documents"
    with contextlib.suppress(OSError):
        notes.write(
            f"mailvault: warning: {unknown} {are} of no archived message (no id, or one the "
            "catalog does not list: a damaged index, or documents another tool wrote into "
            "it): left out of what is shown and counted; run `mailvault reindex`\n"
        )


def _note_more(notes: Any, total: int, offset: int, shown: int) -> None:
    """Say on stderr that hits were left out: a page cut at --limit looked like all of them.
    (Not in the JSON: every line there is one hit, per schemas/search-hit.schema.json.)"""
    if total <= offset + shown:
        return
    part = (
        f"{shown} of {total} hits"
        if not offset
        else f"hits {offset + 1}-{offset + shown} of {total}"
    )
    with contextlib.suppress(OSError):
        notes.write(f"mailvault: note: showing {part}; use --limit/--offset for more\n")


_SEARCH_FLAGS = {"--json": "json", "--count": "count", "--ids": "ids"}
_SEARCH_VALUES = ("--limit", "--offset", "--sort")


def fast_main(argv: list[str], *, exiting: bool = False) -> int | None:
    """Run ``[--vault P] [-q] [-v] search [options] QUERY...`` without importing click or the
    CLI group; None when ``argv`` is anything else (help, other commands, odd options), so the
    caller falls back to the full CLI, which gives the same results and messages.  ``exiting``:
    the caller ends the process right after (see ``audit.record``).
    """
    args = list(argv)
    if not all(arg.isascii() for arg in args) and any(undecodable(arg) for arg in args):
        return None  # bytes that are not UTF-8: the full CLI refuses them as a usage error
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
                if not (value.isascii() and value.isdigit()):  # "²".isdigit(); int() refuses
                    return None  # the full CLI says what is wrong with it
                opts[name[2:]] = int(value)
        elif arg.startswith("--") or arg == "-h":
            return None  # -h, --help and anything unknown: the full CLI explains
        else:
            words.append(arg)
    if not words or len(modes) > 1:
        return None
    if vault is None:
        vault = os.environ.get("MAILVAULT_VAULT") or None
    from mailvault._signals import leave_now, signalled, sigterm_interrupts, stop_code
    from mailvault.errors import MailvaultError

    try:
        if vault is None:
            from mailvault.vault import default_vault_path

            vault = default_vault_path()
        mode = modes[0] if modes else "text"
        with sigterm_interrupts():
            return run(vault, " ".join(words), mode=mode, exiting=exiting, **opts)
    except MailvaultError as exc:
        sys.stderr.write(f"mailvault: error: {one_line(str(exc))}\n")
        return exc.exit_code
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (Terminated): as the click CLI says
        stopped = stop_code(exc)
        sys.stderr.write(f"mailvault: {'terminated' if stopped == 143 else 'interrupted'}\n")
        if not signalled():
            return stopped
    leave_now(stopped)  # out of the except clause, as the click CLI does (no pool here)
