"""`mailvault verify` and `mailvault ledger head|export|check`."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import click

from mailvault import ledger
from mailvault.cli import cli
from mailvault.cli._common import print_chain_head, print_json, vault_from
from mailvault.errors import UsageError


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
@click.option("--quick", is_flag=True, help="Skip re-hashing every blob.")
@click.option(
    "--repair-index", is_flag=True, help="Rebuild the derived search index if it disagrees."
)
@click.option(
    "--ledger-head",
    metavar='"SEQ HASH"',
    help="A head `ledger head` printed earlier (notarised), quoted as one argument: it must "
    "still be in the ledger.",
)
@click.option(
    "--audit-head",
    metavar='"SEQ HASH"',
    help="A head `audit --head` printed earlier, quoted as one argument: it must still be in "
    "the audit trail.",
)
@click.pass_context
def verify(
    ctx: click.Context,
    as_json: bool,
    quick: bool,
    repair_index: bool,
    ledger_head: str | None,
    audit_head: str | None,
) -> None:
    """Check the whole vault: blobs, catalog, ledger chain and index; report every finding.

    Exit 0 when clean (notes alone count as clean), 1 on any error or warning.  The summary
    line goes to stdout after the findings.  Nothing but the derived index is ever
    repaired.  With --ledger-head / --audit-head, a chain cut back or rewritten before a head
    notarised outside the vault is found too (the chains alone cannot show a clean cut).

    Example: mailvault verify --json --audit-head "$(cat audit-head.txt)"
    """
    from mailvault.indexer import index_findings as index_check
    from mailvault.verify import Anchor, parse_anchor, summary
    from mailvault.verify import verify as run_verify

    anchors: dict[str, Anchor] = {}
    if ledger_head:
        anchors["ledger"] = parse_anchor(ledger_head)
    if audit_head:
        anchors["audit"] = parse_anchor(audit_head)
    vault = vault_from(ctx)
    findings = list(run_verify(vault, quick=quick, index_check=index_check, anchors=anchors))
    if repair_index and any(f.code.startswith("index-") for f in findings):
        from mailvault.indexer import reindex

        with vault.write_lock("verify --repair-index"):
            reindex(vault)
        findings = list(run_verify(vault, quick=quick, index_check=index_check, anchors=anchors))
    report = summary(findings)
    if as_json:
        print_json(report)
    else:
        for f in findings:
            click.echo(f"{f.severity:7} {f.code:20} {f.detail}")
        counts = report["counts"]
        assert isinstance(counts, dict)
        click.echo(
            f"verify: {counts['error']} errors, {counts['warning']} warnings, {counts['info']} notes"
            + (" (blobs not re-hashed: --quick)" if quick else "")
        )
    if not report["ok"]:
        ctx.exit(1)


@cli.group(name="ledger")
def ledger_group() -> None:
    """The hash-chained ledger of ingests, deletions, purges and holds."""


@ledger_group.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def head(ctx: click.Context, as_json: bool) -> None:
    """Print the ledger's sequence number and head hash (to notarise outside the vault)."""
    print_chain_head(vault_from(ctx), "ledger", as_json)


@ledger_group.command(name="export")
@click.option(
    "--out", type=click.Path(path_type=Path, dir_okay=False), help="File (default: stdout)."
)
@click.pass_context
def export_ledger(ctx: click.Context, out: Path | None) -> None:
    """Write the ledger as JSON Lines, verifiable without the database (`ledger check`)."""
    vault = vault_from(ctx)
    stream = out.open("w", encoding="utf-8") if out else sys.stdout
    try:
        with sqlite3.connect(f"file:{vault.catalog_path}?mode=ro", uri=True) as db:
            for entry in ledger.iter_entries(db):
                stream.write(json.dumps(entry, sort_keys=True, ensure_ascii=False) + "\n")
    finally:
        if out:
            stream.close()


@ledger_group.command(name="check")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option(
    "--head",
    "expected_head",
    help='A notarised head: "SEQ HASH" as `ledger head` prints it (that entry must be in the '
    "file, later ones may follow), or a bare HASH (it must be the file's last entry).",
)
def check_ledger(file: Path, expected_head: str | None) -> None:
    """Verify an exported ledger file on its own: every hash, every link, no gaps."""
    entries = []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        try:
            entries.append(json.loads(line))
        except ValueError:
            raise UsageError(
                f"{file}:{number}: not a JSON line; is this a `mailvault ledger export` file?"
            ) from None
    problems = ledger.check_chain(entries)
    last = entries[-1]["entry_hash"] if entries else ledger.GENESIS
    if expected_head and " " in expected_head.strip():
        from mailvault.verify import parse_anchor

        seq, digest = parse_anchor(expected_head.strip())
        found = next((e for e in entries if e.get("seq") == seq), None)
        if seq and (found is None or found.get("entry_hash") != digest):
            problems.append(
                f"entry {seq} is {'missing' if found is None else found.get('entry_hash')}, "
                f"the notarised head says {digest}: the ledger was cut back or rewritten"
            )
    elif expected_head and last != expected_head.strip():
        problems.append(f"head is {last}, expected {expected_head}: entries were added or removed")
    for problem in problems:
        click.echo(problem)
    click.echo(
        f"ledger: {len(entries)} entries, head {last}: {'BROKEN' if problems else 'intact'}",
        err=True,
    )
    if problems:
        sys.exit(1)
