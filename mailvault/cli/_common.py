"""Small helpers shared by the command modules."""

from __future__ import annotations

import itertools
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

import click

from mailvault._text import escaped, json_safe, undecodable
from mailvault.vault import Vault, default_vault_path, open_vault, read_only_uri

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


def vault_path(ctx: click.Context) -> Path:
    """--vault, MAILVAULT_VAULT, or the default vault (``vault.default_vault_path``)."""
    given: Path | None = ctx.obj["vault_path"]
    return given if given is not None else Path(default_vault_path())


def vault_from(ctx: click.Context) -> Vault:
    return open_vault(vault_path(ctx))


def print_json(document: Any) -> None:
    """``document`` as indented JSON, non-ASCII text as is but for the controls that
    ``json_safe`` escapes (a C1 CSI, U+2028 in a subject); all-ASCII escapes when it holds
    a path with undecodable bytes (surrogate escapes cannot be written as UTF-8, while
    ``"\\udcfe"`` is valid JSON that reads back as the same path)."""
    text = json.dumps(document, indent=2, ensure_ascii=False)
    if undecodable(text):
        text = json.dumps(document, indent=2)
    click.echo(json_safe(text))


class Listing(Protocol[T_co]):
    """Items that can be read more than once: a list, or a retention plan (read again from
    its table each time)."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[T_co]: ...


def print_json_list(
    document: dict[str, Any], key: str, items: Listing[T], encode: Callable[[T], Any]
) -> None:
    """``print_json({**document, key: [encode(item) for item in items]})``, the same bytes,
    written a few hundred items at a time: neither that list nor the whole text is built (a
    retention run lists every message past retention).  ``items`` is read twice: whether any
    holds undecodable bytes decides how all of it is written."""
    ascii_only = any(
        undecodable(json.dumps(value, ensure_ascii=False))
        for value in itertools.chain([document], map(encode, items))
    )
    text = json.dumps({**document, key: []}, indent=2, ensure_ascii=ascii_only)
    if not items:
        click.echo(json_safe(text))
        return
    click.echo(json_safe(text.removesuffix("[]\n}") + "[\n"), nl=False)
    encoded = (_item(encode(item), ascii_only) for item in items)
    separator = ""  # before every chunk but the first
    while chunk := list(itertools.islice(encoded, 256)):
        click.echo(json_safe(separator + ",\n".join(chunk)), nl=False)
        separator = ",\n"
    click.echo("\n  ]\n}")


def _item(value: Any, ascii_only: bool) -> str:
    """``value`` as ``print_json`` writes an item of a list at the top level of a document:
    indented two levels (JSON strings hold no raw line break: every one is structure)."""
    return "    " + json.dumps(value, indent=2, ensure_ascii=ascii_only).replace("\n", "\n    ")


def shown_path(path: object) -> str:
    """A path for a line of text output: bytes of its name that are not UTF-8 as ``\\xNN``
    (a file name may be any bytes; the terminal takes UTF-8 only)."""
    from mailvault._text import shown

    return shown(str(path))


def escape(text: str) -> str:
    """``text`` for one line of text output, with what could forge or hide a line escaped.

    Values that reach the terminal from the vault or from a file (a hold's reason, an audit
    entry's user or query, a line of an exported ledger) may hold line breaks, terminal
    escapes or bidi overrides: a reason "x\\n2026-01-01 ... released" would print as a line of
    its own.  Every character Python does not call printable (C0/C1 controls, line and
    paragraph separators, zero-width and bidi controls, the surrogate escapes of undecodable
    bytes) is written as its backslash escape, as ``repr`` would, and a backslash as two, so
    the escaped text reads back unambiguously.  Masking (``search.output.clean``) would hide
    that something was there; in an audit listing that is the point of interest.
    """
    return escaped(text)


def print_chain_head(vault: Vault, table: str, as_json: bool) -> None:
    """The last sequence number and hash of a hash chain (the ledger or the audit trail), to
    notarise outside the vault: ``SEQ HASH``, or the ledger-head (audit-head) document.

    Each chain's document has its own schema id: a head is only meaningful for the chain it
    came from, and a reader (or `verify --audit-head`'s caller) must be able to tell a head of
    the audit trail from one of the ledger."""
    import sqlite3

    from mailvault import ledger

    with sqlite3.connect(read_only_uri(vault.catalog_path), uri=True) as db:
        seq, digest = ledger.head(db, table)
    if as_json:
        schema = "mailvault/ledger-head/v1" if table == "ledger" else "mailvault/audit-head/v1"
        document = {"schema": schema, "vault_id": vault.vault_id}
        print_json({**document, "seq": seq, "head": digest})
    else:
        click.echo(f"{seq} {digest}")


class IndexProgress:
    """One status line on stderr while parsing and indexing: count and rate."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last < 0.2 and done != total:
            return
        self.last = now
        rate = done / max(now - self.started, 1e-6)
        sys.stderr.write(f"\rindexing: {done}/{total} msgs  {rate:,.0f} msg/s\033[K")
        sys.stderr.flush()

    def finish(self) -> None:
        if self.last:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self.last = 0.0
