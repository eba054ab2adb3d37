"""`mailvault index`, `reindex`, `search` and `show`.

The search command imports only mailvault.search (tantivy and the standard library) so that a
query starts fast; everything heavier is imported inside the command that needs it.
"""

from mailvault.cli import _CheckedCommand, cli  # isort: skip  (first: the group commands join)

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from mailvault.vault import Vault

QUERY_HELP = """\b
Query language (docs/search.md):
  from:alice@example.com  to:  cc:  bcc:  recipient:   exact address, or words of it
  subject:  body:  attachment:  attachment-text:  message-id:  list:  thread:  account:
  "a phrase"  word*  AND  OR  NOT  -word  ( )          words side by side must all match
  date:2024-03  date:[2024-01-01 TO 2024-03-31]  after:2024-01-01  before:2024-04-01
  has:attachment  size:>1M  size:<10k
"""


def _print_report(report: Any, as_json: bool, verb: str) -> None:
    if as_json:
        from mailvault.cli._common import print_json

        print_json({"schema": "mailvault/index-report/v1", **report.as_json()})
        return
    line = (
        f"{verb} {report.indexed} messages ({report.parsed} newly parsed"
        f"{f', {report.unreadable} unreadable' if report.unreadable else ''}"
        f"{f', {report.defective} with defects' if report.defective else ''}"
        f"{f', {report.repaired} repaired' if report.repaired else ''}) "
        f"in {report.seconds:.1f}s; the index holds {report.documents} messages"
    )
    click.echo(line)
    for digest in report.missing:
        click.echo(
            f"error: blob {digest} is missing, unreadable or corrupt, so it was not indexed; "
            "run `mailvault verify`",
            err=True,
        )


def _run_indexer(ctx: click.Context, as_json: bool, rebuild: bool, exact: bool = False) -> None:
    from mailvault.cli._common import IndexProgress, vault_from
    from mailvault.indexer import catch_up, purged_text_lingers, reindex

    vault = vault_from(ctx)
    quiet = ctx.obj.get("quiet", False)
    progress = IndexProgress() if sys.stderr.isatty() and not as_json and not quiet else None
    try:
        with vault.write_lock("reindex" if rebuild else "index"):
            if rebuild:
                report = reindex(vault, progress=progress)
            else:
                report = catch_up(vault, progress=progress, exact=exact)
            if not rebuild and purged_text_lingers(vault):
                # a retention run killed before its rebuild: finish it, so no purged text
                # stays readable in the index files
                rebuild = True
                report = reindex(vault, progress=progress)
    finally:
        if progress:
            progress.finish()
    _print_report(report, as_json, "rebuilt the index from" if rebuild else "indexed")
    if report.missing:
        ctx.exit(1)


@cli.command("index")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--exact",
    is_flag=True,
    help="Check every message against the index, not only the counts: re-add lost documents "
    "and delete extra, doubled and id-less ones even where the counts agree (what verify's "
    "index findings name).",
)
@click.pass_context
def index_command(ctx: click.Context, as_json: bool, exact: bool) -> None:
    """Parse and index every archived message that is not indexed yet (catch up).

    Safe to interrupt and rerun: it continues where it stopped, with no gaps and one index
    document per message.

    Example: mailvault index
    """
    _run_indexer(ctx, as_json, rebuild=False, exact=exact)


@cli.command("reindex")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def reindex_command(ctx: click.Context, as_json: bool) -> None:
    """Rebuild the search index from the object store and catalog alone.

    The new index is built beside the old one and swapped in atomically; searches keep working
    on the old index until then.

    Example: mailvault reindex
    """
    _run_indexer(ctx, as_json, rebuild=True)


_AFTER_DASHDASH = "mailvault.search.dashdash"  # ctx.meta: the query words followed a `--`


class _SearchCommand(_CheckedCommand):
    """`search`, whose unknown options are query words (``-draft`` is a negation), except a
    ``--word`` before any ``--``: that is a mistyped option (``--limt 5 foo`` searched for
    "--limt 5 foo"), a usage error naming the closest option."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        end = args.index("--") if "--" in args else len(args)
        ctx.meta[_AFTER_DASHDASH] = end < len(args)
        options = [p for p in self.get_params(ctx) if isinstance(p, click.Option)]
        known = {name: o for o in options for name in o.opts if name.startswith("--")}
        i = 0
        while i < end:
            name, eq, _ = args[i].partition("=")
            option = known.get(name)
            if name.startswith("--") and option is None:
                raise click.NoSuchOption(name, possibilities=sorted(known), ctx=ctx)
            i += 2 if option is not None and not option.is_flag and not eq else 1
        return super().parse_args(ctx, args)


@cli.command(
    cls=_SearchCommand,
    context_settings={"ignore_unknown_options": True, "help_option_names": ["--help"]},
    epilog=QUERY_HELP,
)
@click.argument("query", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=50,
    show_default=True,
    help="Print at most N hits (0: all).",
)
@click.option("--offset", type=click.IntRange(min=0), default=0, help="Skip the first N hits.")
@click.option(
    "--sort",
    type=click.Choice(["-date", "date", "score"]),
    default="-date",
    show_default=True,
    help="-date: newest first; date: oldest first; score: best match first.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="JSON Lines (schemas/search-hit.schema.json)."
)
@click.option("--count", "as_count", is_flag=True, help="Print the number of hits only.")
@click.option("--ids", "as_ids", is_flag=True, help="Print full sha256 ids only (for pipes).")
@click.pass_context
def search(
    ctx: click.Context,
    query: tuple[str, ...],
    limit: int,
    offset: int,
    sort: str,
    as_json: bool,
    as_count: bool,
    as_ids: bool,
) -> None:
    """Search the archive; exit 0 with hits, 1 with none, 2 on a bad query.

    Quote the whole query for the shell when it holds phrases or parentheses:

      mailvault search 'from:alice@example.com subject:"quarterly report" after:2024-01-01'

    A lone -h is this help, as for every other command; a query that starts with -word
    (NOT word) works as typed, and `mailvault search -- -h` searches NOT h. A --word that is
    no option is a usage error (a typo) unless it comes after --.
    """
    from mailvault.errors import UsageError
    from mailvault.search import run

    if query == ("-h",) and not ctx.meta.get(_AFTER_DASHDASH):
        click.echo(ctx.get_help())
        ctx.exit(0)

    if as_json + as_count + as_ids > 1:
        raise UsageError("--json, --count and --ids exclude each other; pick one")
    mode = "json" if as_json else "count" if as_count else "ids" if as_ids else "text"
    from mailvault.cli._common import vault_path as given_vault

    vault_path = given_vault(ctx)
    code = run(
        vault_path,
        " ".join(query),
        limit=limit,
        offset=offset,
        sort=sort,
        mode=mode,
        out=sys.stdout,
    )
    ctx.exit(code)


def _warn(text: str) -> None:
    from mailvault._text import one_line

    click.echo(f"mailvault: warning: {one_line(text)}", err=True)


@cli.command()
@click.argument("ident", metavar="ID")
@click.option("--raw", is_flag=True, help="Write the exact stored bytes to stdout.")
@click.option("--part", type=click.IntRange(min=0), help="Part number N (see the attachment list).")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path, allow_dash=True),
    help="With --part: write the decoded part to FILE ('-' or no --out: stdout, refused on a "
    "terminal).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the message as JSON.")
@click.pass_context
def show(
    ctx: click.Context,
    ident: str,
    raw: bool,
    part: int | None,
    out: Path | None,
    as_json: bool,
) -> None:
    """Show one message: ID is a sha256, a unique prefix of 8+ hex digits, or a Message-ID.

    Prints the headers, the text body and the numbered attachment list.

    Examples: mailvault show 3fa9c2e1 | mailvault show '<abc@example.com>' --raw > msg.eml |
    mailvault show 3fa9c2e1 --part 3 --out report.pdf
    """
    from mailvault.audit import record as audit
    from mailvault.cli._common import vault_from
    from mailvault.errors import StoreError, UsageError
    from mailvault.show import (
        AmbiguousId,
        MessageNotFound,
        require_not_purged,
        resolve,
    )

    if sum([raw, part is not None, as_json]) > 1:
        raise UsageError("--raw, --part and --json exclude each other; pick one")
    if out is not None and part is None:
        raise UsageError("--out goes with --part N")
    vault = vault_from(ctx)
    try:
        digest = resolve(vault.catalog_path, ident)
        require_not_purged(vault.catalog_path, digest)
    except AmbiguousId as exc:
        # The candidates' dates, senders and subjects are archived content too: audited first.
        ids = [candidate.sha256 for candidate in exc.candidates]
        audit(vault.root, "show", ident, len(ids), mode="candidates", ids=ids)
        click.echo(f"mailvault: error: {exc}:", err=True)
        for candidate in exc.candidates:
            click.echo(f"  {candidate.line()}", err=True)
        ctx.exit(exc.exit_code)
    except MessageNotFound:
        audit(vault.root, "show", ident, 0, mode="not-found")  # a probe, as a 0-hit search
        raise
    mode = "raw" if raw else "part" if part is not None else "json" if as_json else "text"
    detail: dict[str, Any] = {"id": digest, "mode": mode}
    if part is not None:
        detail["part"] = part
    audit(vault.root, "show", ident, 1, **detail)  # durable before anything is shown
    try:
        _show(vault, digest, raw=raw, part=part, out=out, as_json=as_json)
    except StoreError:
        # a retention run may have purged it since it was looked up: say that, not "missing"
        require_not_purged(vault.catalog_path, digest)
        raise


def _show(
    vault: "Vault", digest: str, *, raw: bool, part: int | None, out: Path | None, as_json: bool
) -> None:
    """The message (or its part) once its reading is audited."""
    from mailvault.cli._common import print_json
    from mailvault.errors import UsageError
    from mailvault.show import as_json as message_json
    from mailvault.show import first_ingest, render_text, save_part, verified_chunks, write_part

    store = vault.read_store()
    if raw:
        stdout = sys.stdout.buffer
        for chunk in verified_chunks(store, digest):
            stdout.write(chunk)
        stdout.flush()
        return
    if part is not None:
        if out is None or str(out) == "-":
            if out is None and sys.stdout.isatty():
                raise UsageError("refusing to write a part to a terminal; add --out FILE")
            write_part(store, digest, part, sys.stdout.buffer.write, _warn)
            sys.stdout.buffer.flush()
        else:
            from mailvault.cli._common import escape

            size = save_part(store, digest, part, out, _warn)
            click.echo(f"wrote part {part} ({size:,} bytes) to {escape(str(out))}", err=True)
        return
    from mailvault.parse.skeleton import parse_chunks

    when = first_ingest(vault.catalog_path, digest)
    # a big message is read as a stream (mailvault/parse/skeleton.py): memory stays bounded
    parsed = parse_chunks(verified_chunks(store, digest), digest, ingest_time=when)
    if as_json:
        print_json({"schema": "mailvault/show/v1", **message_json(parsed)})
        return
    for line in render_text(parsed):
        click.echo(line)
