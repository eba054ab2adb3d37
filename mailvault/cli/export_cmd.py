"""`mailvault export` and `mailvault import`."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from mailvault._text import one_line
from mailvault.cli import cli
from mailvault.cli._common import escape, print_json, shown_path, vault_from
from mailvault.errors import UsageError
from mailvault.export import FORMATS, ExportOptions, export
from mailvault.importer import VARIANTS, ImportReport, import_sources


class _Bar:
    """A click progress bar on stderr, started at the first update."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.bar: Any = None
        self.done = 0

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = click.progressbar(length=max(total, 1), label=self.label, file=sys.stderr)
            self.bar.__enter__()
        self.bar.update(done - self.done)
        self.done = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


@contextmanager
def _progress_bar(ctx: click.Context, as_json: bool, label: str) -> Iterator[_Bar | None]:
    """A click progress bar on stderr when it is a terminal; None otherwise."""
    if as_json or ctx.obj.get("quiet") or not sys.stderr.isatty():
        yield None
        return
    bar = _Bar(label)
    try:
        yield bar
    finally:
        bar.close()


@cli.command("export")
@click.argument("query", required=False)
@click.option("--format", "fmt", type=click.Choice(FORMATS), required=True, help="Output format.")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    required=True,
    help="Target: a directory (maildir, eml) or a file (mbox).",
)
@click.option("--account", help="Only messages fetched by, or imported with, this account.")
@click.option(
    "--line-endings",
    type=click.Choice(["lf", "crlf"]),
    default=None,
    help="lf (default for maildir, mbox) or crlf: the exact stored bytes (default for eml).",
)
@click.option(
    "--manifest/--no-manifest",
    default=True,
    show_default=True,
    help="Write manifest.jsonl and manifest.json (sha256, size, place of every message).",
)
@click.option("--append", is_flag=True, help="mbox only: add to an existing mbox file.")
@click.option("--json", "as_json", is_flag=True, help="Print the export summary as JSON.")
@click.pass_context
def export_command(
    ctx: click.Context,
    query: str | None,
    fmt: str,
    out: Path,
    account: str | None,
    line_endings: str | None,
    manifest: bool,
    append: bool,
    as_json: bool,
) -> None:
    """Copy the whole vault, one account, or the hits of a search QUERY out as files.

    Maildir: one file per message in cur/ (name ends ,H=<sha256>:2,S); exporting again into the
    same Maildir adds only what is missing.  mbox: one mboxrd file.  eml: <sha256>.eml files.
    See docs/export.md for checking an export with sha256sum.

    Example: mailvault export 'from:alice@example.com' --format mbox --out alice.mbox
    """
    if str(out) == "-":
        raise UsageError(
            "--out - (standard output) is not supported: an export is written under a "
            "temporary name and renamed, with its manifest beside it; give a path"
        )
    vault = vault_from(ctx)
    options = ExportOptions(
        fmt=fmt,
        out=out,
        line_endings=line_endings,
        manifest=manifest,
        append=append,
        query=query,
        account=account,
    )
    with _progress_bar(ctx, as_json, "exporting") as progress:

        def report(summary: dict[str, Any]) -> None:
            if progress is not None:
                progress.close()  # the bar's last line before the summary
            _report_export(summary, fmt, out, manifest, as_json)

        # Printed from inside the export: until it is out, a killed export's rerun finds the
        # run finished instead of starting it again (see export()).
        summary = export(vault, options, progress=progress, report=report)
    if summary.get("unindexed"):
        ctx.exit(1)  # the query could not see every archived message: not the whole answer


def _report_export(
    summary: dict[str, Any], fmt: str, out: Path, manifest: bool, as_json: bool
) -> None:
    if as_json:
        from mailvault.export.manifest import manifest_paths

        ok = not summary.get("unindexed")
        document = {"schema": summary["schema"], "ok": ok, "target": str(out.absolute())}
        document["manifest"] = str(manifest_paths(fmt, out.absolute())[1]) if manifest else None
        document.update((k, v) for k, v in summary.items() if k != "schema")
        print_json(document)
    else:
        _echo_summary(summary, fmt, out)
    sys.stdout.flush()  # shown before the export's last step, not when the process ends


def _echo_summary(summary: dict[str, Any], fmt: str, out: Path) -> None:
    count = summary["count"]
    click.echo(
        f"exported {count} message{'' if count == 1 else 's'} ({summary['total_bytes']:,} "
        f"bytes) to {shown_path(out)} "
        f"[{fmt}, {summary['line_endings']}]: {summary['added']} written, "
        f"{summary['skipped']} already there"
    )
    for warning in summary["warnings"]:  # they name files in the target, named by anyone
        click.echo(f"warning: {one_line(warning)}", err=True)


def _echo_entries(report: ImportReport) -> None:
    """The report's rejected, skipped and warned entries, one line each.

    A source's file names are anyone's bytes (a name holding a line break and terminal escapes
    would forge a summary line or write the clipboard), and so is what a reason quotes from a
    file: both are escaped."""
    for r in report.rejected:
        click.echo(f"rejected: {_where(r.path, r.offset)}: {escape(r.reason)}", err=True)
    for s in report.skipped:
        click.echo(f"skipped: {_where(s.path, None)}: {escape(s.reason)}", err=True)
    for w in report.warnings:
        click.echo(f"warning: {_where(w.path, w.offset)}: {escape(w.message)}", err=True)


def _where(path: Path, offset: int | None) -> str:
    return escape(str(path)) + (f" at byte {offset}" if offset is not None else "")


@cli.command("import")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path, exists=False))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", *FORMATS]),
    default="auto",
    show_default=True,
    help="Source format; auto: a dir with cur/ or new/ is a Maildir, a dir of *.eml files is "
    "eml, a *.eml file is one message, a file starting with 'From ' (or named *.mbox) is an "
    "mbox.",
)
@click.option("--account", help="Record the messages as belonging to this account (a label).")
@click.option(
    "--mbox-variant",
    type=click.Choice(VARIANTS),
    default="mboxrd",
    show_default=True,
    help="mboxrd: '>From ' lines lose one '>'; mboxo: bytes kept as they are.",
)
@click.option("--no-index", is_flag=True, help="Do not parse and index after the import.")
@click.option("--json", "as_json", is_flag=True, help="Print the import report as JSON.")
@click.pass_context
def import_command(
    ctx: click.Context,
    paths: tuple[Path, ...],
    fmt: str,
    account: str | None,
    mbox_variant: str,
    no_index: bool,
    as_json: bool,
) -> None:
    """Import messages from Maildir trees, mbox files and .eml files into the vault.

    Exact bytes are stored and de-duplicated by sha256; the source path (and mbox offset) is
    recorded.  Exit 1 if any entry was rejected; the report names each with the reason.

    Example: mailvault import ~/Maildir old-archive.mbox --account legacy
    """
    vault = vault_from(ctx)
    with _progress_bar(ctx, as_json, "importing") as progress:
        report = import_sources(
            vault,
            list(paths),
            fmt=fmt,
            account=account,
            mbox_variant=mbox_variant,
            index=not no_index,
            progress=progress,
        )
    if as_json:
        print_json(report.as_json())
    else:
        kinds = ", ".join(sorted({kind for _, kind in report.sources}))
        click.echo(
            f"imported {report.imported}, duplicates {report.duplicates}, rejected "
            f"{len(report.rejected)}, skipped {len(report.skipped)} "
            f"({report.bytes:,} bytes, {kinds}, {report.seconds:.1f} s)"
        )
        _echo_entries(report)
        index = report.index
        if index is not None and (index.get("parsed") or index.get("indexed")):
            indexed = int(index.get("indexed", 0))
            seen = report.imported + report.duplicates
            earlier = " (with earlier ones not indexed yet)" if indexed > seen else ""
            click.echo(f"indexed {indexed} message{'' if indexed == 1 else 's'}{earlier}")
        if report.index_error:
            click.echo(f"mailvault: warning: {escape(report.index_error)}", err=True)
    if not report.ok:
        ctx.exit(1)
