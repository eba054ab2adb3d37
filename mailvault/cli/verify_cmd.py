"""`mailvault verify` and `mailvault ledger head|export|check`."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import sys
from pathlib import Path
from typing import IO, Any

import click

from mailvault import ledger
from mailvault._fs import fsync_dir
from mailvault._tempfiles import remove_orphans, temp_path
from mailvault._text import json_safe, shown
from mailvault.cli import cli
from mailvault.cli._common import print_chain_head, print_json, vault_from
from mailvault.errors import UsageError
from mailvault.vault import read_only_uri


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
@click.option(
    "--quick", is_flag=True, help="Skip re-hashing every blob and checksumming the index files."
)
@click.option(
    "--repair-index",
    is_flag=True,
    help="Rebuild the derived search index if it disagrees or is damaged; what it repaired is "
    "still reported (and exits 1).",
)
@click.option(
    "--ledger-head",
    metavar='"SEQ HASH"',
    help="A head `ledger head` printed earlier (notarised), quoted as one argument (or "
    "SEQ:HASH, or the bare HASH): it must still be in the ledger.",
)
@click.option(
    "--audit-head",
    metavar='"SEQ HASH"',
    help="A head `audit --head` printed earlier, quoted as one argument (or SEQ:HASH, or the "
    "bare HASH): it must still be in the audit trail.",
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

    Exit 0 when clean (notes alone count as clean), 1 on any error or warning, including one
    --repair-index repaired.  The summary
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
    # What a rebuild repairs is still reported (an auditor keeping the --json output must see
    # that the index was damaged, and a cron job's exit code too); notes alone (index-pending:
    # `mailvault index` catches up) are no reason to rebuild.
    repaired = [f for f in findings if f.code.startswith("index-") and f.severity != "info"]
    if repair_index and repaired:
        from mailvault.indexer import reindex

        with vault.write_lock("verify --repair-index"):
            reindex(vault)
        findings = list(run_verify(vault, quick=quick, index_check=index_check, anchors=anchors))
    else:
        repaired = []
    report = summary(findings, repaired=repaired)
    if as_json:
        print_json(report)
    else:
        for f in repaired:
            click.echo(f"{'repaired':7} {f.code:20} {f.detail}")
        for f in findings:
            click.echo(f"{f.severity:7} {f.code:20} {f.detail}")
        counts = report["counts"]
        assert isinstance(counts, dict)
        click.echo(
            f"verify: {counts['error']} errors, {counts['warning']} warnings, {counts['info']} notes"
            + (f"; the index was rebuilt to repair {len(repaired)}" if repaired else "")
            + (" (blobs not re-hashed, index files not read: --quick)" if quick else "")
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
    """Write the ledger as JSON Lines, verifiable without the database (`ledger check`).

    --out FILE is written under a temporary name beside it and renamed over it when whole."""
    vault = vault_from(ctx)
    if out is None:
        _write_ledger(vault.catalog_path, sys.stdout)
        return
    final = Path(os.path.realpath(out))  # a symlink's target is written, as it always was
    if _in_place(out, final):
        with _open_export(out, out, "w") as stream:
            _write_ledger(vault.catalog_path, stream)
        return
    remove_orphans(final.parent, f".{final.name}.")  # of an export killed with SIGKILL
    tmp = Path(temp_path(final.parent, final.name))
    try:
        with _open_export(out, tmp, "x") as stream:
            _write_ledger(vault.catalog_path, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, final)
    except BaseException:  # Ctrl-C, a full disk: an earlier export stays as it was
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    with contextlib.suppress(OSError):  # the rename made durable; the file itself is
        fsync_dir(final.parent)


def _in_place(out: Path, final: Path) -> bool:
    """Whether --out is no file to replace by renaming: a FIFO, a device, or a descriptor
    of this process (`/dev/stdout`, `/proc/self/fd/N`, which resolve to what the descriptor
    is open on: renaming over it would replace a file opened for appending)."""
    if str(out.absolute()).startswith(("/dev/", "/proc/")):
        return True
    return final.exists() and not final.is_file()


def _open_export(out: Path, path: Path, mode: str) -> IO[str]:
    """``path`` opened for the export of ``--out out``, or the usage error naming ``out``."""
    try:
        return path.open(mode, encoding="utf-8")
    except OSError as exc:
        raise UsageError(
            f"cannot write the ledger export to {shown(str(out))} ({exc.strerror or exc}); give "
            "--out a file in a directory that exists and that you can write"
        ) from None


def _write_ledger(catalog: Path, stream: IO[str]) -> None:
    with sqlite3.connect(read_only_uri(catalog), uri=True) as db:
        for entry in ledger.iter_entries(db):
            line = json.dumps(entry, sort_keys=True, ensure_ascii=False)
            stream.write(json_safe(line) + "\n")  # one entry, one line for any reader


_JSON_KINDS = {list: "array", str: "string", int: "number", float: "number", bool: "boolean"}
_JSON_KINDS[type(None)] = "null"


def _read_export(file: Path) -> list[tuple[int, dict[str, Any]]]:
    """The entries of a `ledger export` file, each with its line number.

    Lines are split on "\\n" only, as the export writes them and the reference checker in
    docs/ledger.md reads them: ``str.splitlines`` also splits on U+2028, U+0085 and the like,
    which JSON leaves unescaped inside strings (an account named ``legal\\u2028team``).  A file
    that is not UTF-8 JSON objects, one a line, is not a ledger export: a UsageError naming
    the first line that is not (exit 2), never a traceback.
    """
    data = file.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        number = data.count(b"\n", 0, exc.start) + 1
        raise UsageError(
            f"{file}:{number}: not UTF-8 text; is this a `mailvault ledger export` file?"
        ) from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    entries: list[tuple[int, dict[str, Any]]] = []
    for number, line in enumerate(lines, 1):
        try:
            entry = json.loads(line)
        except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested past the stack
            raise UsageError(
                f"{file}:{number}: not a JSON line; is this a `mailvault ledger export` file?"
            ) from None
        if not isinstance(entry, dict):
            kind = _JSON_KINDS.get(type(entry), "value")
            raise UsageError(
                f"{file}:{number}: a JSON {kind}, not a ledger entry (an object); is this a "
                "`mailvault ledger export` file?"
            )
        if number == 1 and {"os_user", "command"} <= entry.keys() and "kind" not in entry:
            raise UsageError(
                f"{file}: an audit trail (`mailvault audit --json`), not a ledger export; "
                "check it against its head with `mailvault verify --audit-head`"
            )
        entries.append((number, entry))
    return entries


def _malformed(file: Path, number: int, entry: dict[str, Any]) -> str | None:
    """Why a line of an export is no well-formed ledger entry (a key missing, a seq that is no
    number, a hash that is no hash), or None.  The chain check would report such a line as
    edited too; this names its line and what is wrong with it."""
    missing = [key for key in (*ledger.LEDGER_FIELDS, "entry_hash") if key not in entry]
    if missing:
        return f"{file}:{number}: the entry has no {', '.join(missing)} (edited or cut short)"
    if type(entry["seq"]) is not int:
        return f"{file}:{number}: seq {entry['seq']!r} is not a whole number (edited)"
    if not isinstance(entry["entry_hash"], str) or not ledger.is_hash(entry["entry_hash"]):
        return f"{file}:{number}: entry_hash {entry['entry_hash']!r} is not a sha256 (edited)"
    unknown = sorted(set(entry) - _EXPORTED)
    if unknown:
        # the hash covers the known fields only: a note added to an entry would pass unseen
        return (
            f"{file}:{number}: unknown field {', '.join(map(repr, unknown))}, which no hash "
            "covers (added after the export, or the file is not from this mailvault)"
        )
    return None


_EXPORTED = frozenset((*ledger.LEDGER_FIELDS, "entry_hash"))  # the keys `ledger export` writes


@ledger_group.command(name="check")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option(
    "--head",
    "expected_head",
    metavar='"SEQ HASH"',
    help='A notarised head: "SEQ HASH" as `ledger head` prints it, or SEQ:HASH (that entry '
    "must be in the file, later ones may follow), or a bare HASH (it must be the file's last "
    "entry).",
)
def check_ledger(file: Path, expected_head: str | None) -> None:
    """Verify an exported ledger file on its own: every hash, every link, no gaps.

    Exit 0 when intact, 1 when broken (each problem on stdout, naming the entry or line; an
    entry with a field the export does not write is one) or when FILE is empty and no --head
    says that it should be, 2 when FILE is not a ledger export at all.
    """
    from mailvault.cli._common import escape
    from mailvault.verify import parse_anchor

    anchor = parse_anchor(expected_head) if expected_head else None  # before reading FILE
    numbered = _read_export(file)
    entries = [entry for _, entry in numbered]
    problems = [p for n, e in numbered if (p := _malformed(file, n, e)) is not None]
    problems += ledger.check_chain(entries)
    if not entries and anchor is None:
        problems.append(
            f"{file} holds no ledger entries, so nothing was verified: a file cut to nothing "
            "looks just like the export of a vault that never recorded anything; check that "
            f'against the head `ledger head` printed for it (--head "0 {ledger.GENESIS}")'
        )
    last = str(entries[-1].get("entry_hash")) if entries else ledger.GENESIS
    if anchor is not None and anchor[0] is not None:
        seq, digest = anchor
        found = next((e for e in entries if e.get("seq") == seq), None)
        if seq == 0 and digest != ledger.GENESIS:
            problems.append(
                f"the notarised head is entry 0 (an empty ledger), whose hash is "
                f"{ledger.GENESIS}, not {digest}"
            )
        elif seq and (found is None or found.get("entry_hash") != digest):
            problems.append(
                f"entry {seq} is {'missing' if found is None else found.get('entry_hash')}, "
                f"the notarised head says {digest}: the ledger was cut back or rewritten"
            )
    elif anchor is not None and last != anchor[1]:
        problems.append(f"head is {last}, expected {anchor[1]}: entries were added or removed")
    for problem in problems:
        click.echo(escape(problem))  # a hostile file's values must not forge lines
    verdict = "intact" if not problems else ("EMPTY" if not entries else "BROKEN")
    click.echo(f"ledger: {len(entries)} entries, head {escape(last)}: {verdict}", err=True)
    if problems:
        sys.exit(1)
