"""`mailvault audit`, `mailvault hold add|list|release`, `mailvault retention apply`."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from mailvault import ledger
from mailvault._text import json_safe
from mailvault.cli import cli
from mailvault.cli._common import escape, print_chain_head, print_json, print_json_list, vault_from
from mailvault.errors import UsageError

if TYPE_CHECKING:
    from mailvault.compliance import Plan
    from mailvault.vault import Vault


@cli.command()
@click.option("--since", help="Only entries at or after this date (YYYY-MM-DD or ISO time).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON Lines.")
@click.option(
    "--head",
    "show_head",
    is_flag=True,
    help="Print the trail's last sequence number and hash (to notarise; `verify --audit-head`).",
)
@click.pass_context
def audit(ctx: click.Context, since: str | None, as_json: bool, show_head: bool) -> None:
    """List the audit trail: every search, show, export and retention run, who ran it and what it
    returned.

    Example: mailvault audit --since 2026-01-01
    """
    import json

    if show_head:
        print_chain_head(vault_from(ctx), "audit", as_json)
        return

    from mailvault.compliance import audit_entries

    moment = None
    if since:
        try:
            moment = datetime.fromisoformat(since)
        except ValueError:
            raise UsageError(f"--since {since!r} is not a date; use YYYY-MM-DD") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
    for entry in audit_entries(vault_from(ctx), moment):
        if as_json:
            click.echo(json_safe(json.dumps(entry, ensure_ascii=False)))
        else:
            # One entry, one line: every field is escaped (a user name or query with a line
            # break in it must not print as an entry of its own).
            query = f" {entry['query']!r}" if entry["query"] is not None else ""
            detail = ledger.parse_detail(entry["detail"])
            click.echo(
                f"{escape(str(entry['at'])[:19])} {escape(str(entry['os_user'])):10} "
                f"{escape(str(entry['command'])):8}{query} -> {entry['results']}"
                + _stage(str(entry["command"]), entry["results"], detail)
                + _claimed(detail)
            )


def _stage(command: str, results: object, detail: dict[str, Any]) -> str:
    """The stage of an export or retention run and what it was about, so that a run killed
    part-way (a ``started`` with no ``finished`` after it) shows without --json:
    ``  [started, 12 selected, to /srv/out.mbox]``, ``  [finished, 3 purged]``."""
    stage = detail.get("stage")
    if not isinstance(stage, str):
        return ""
    parts = [escape(stage)]
    if command == "export":
        parts.append(f"{results} {'written' if stage == 'finished' else 'selected'}")
        if detail.get("recovered"):
            parts.append("recovered from a killed run")
        parts.append(f"to {escape(str(detail.get('target')))}")
    else:
        counts = ("expired", "held", "kept", "purged")  # kept: shown only when some were
        parts += [
            f"{detail[k]} {k}"
            for k in counts
            if isinstance(detail.get(k), int) and (k != "kept" or detail[k])
        ]
    return f"  [{', '.join(parts)}]"


def _claimed(detail: dict[str, Any]) -> str:
    """The login names the environment claimed when the entry was written, when they were not
    the real user (``audit.claimed_names``), labelled as such: ``  [claimed LOGNAME=...]``."""
    claims = detail.get("claimed_user")
    if not isinstance(claims, dict) or not claims:
        return ""
    names = " ".join(f"{escape(str(k))}={escape(str(v))}" for k, v in sorted(claims.items()))
    return f"  [claimed {names}]"


@cli.group()
def hold() -> None:
    """Legal holds: protect every message matching a query from retention purges."""


@hold.command(name="add")
@click.argument("name")
@click.argument("query")
@click.option("--reason", help="Why (matter number, request); recorded in the ledger.")
@click.pass_context
def hold_add(ctx: click.Context, name: str, query: str, reason: str | None) -> None:
    """Place hold NAME on every message matching QUERY (evaluated again at each purge).

    Example: mailvault hold add acme-litigation 'from:acme.com OR to:acme.com' --reason "case 42"
    """
    from mailvault.compliance import add_hold

    vault = vault_from(ctx)
    with vault.write_lock("hold add"):
        _index_first(vault, "a hold's query is matched through the index")
        matches = add_hold(vault, name, query, reason)
    click.echo(
        f"hold {name!r} placed; it protects {matches} message{'' if matches == 1 else 's'} now"
    )


@hold.command(name="list")
@click.option("--all", "include_released", is_flag=True, help="Include released holds.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def hold_list(ctx: click.Context, include_released: bool, as_json: bool) -> None:
    """List holds."""
    from mailvault.compliance import list_holds

    holds = list_holds(vault_from(ctx), include_released=include_released)
    if as_json:
        print_json({"schema": "mailvault/holds/v1", "holds": holds})
        return
    for h in holds:
        # One hold, one line: a reason (or a name edited in the catalog) with a line break
        # would otherwise print a line that looks like another hold.
        state = f"released {escape(h['released_at'][:19])}" if h["released_at"] else "active"
        reason = escape(h["reason"]) if h["reason"] else "no reason given"
        click.echo(
            f"{escape(h['name']):20} {state:28} {h['query']!r}  ({reason}){_syntax(h['syntax'])}"
        )


def _syntax(version: int) -> str:
    """For `hold list`: a hold read in an older version of the query language says so."""
    from mailvault.search.query import SYNTAX

    if version == SYNTAX:
        return ""
    words = (
        "; and, or, not in lower case are words"
        if version == 1
        else "; read as it was placed: docs/search.md, Query language"
    )
    return f"  [query language {version}{words}]"


@hold.command(name="release")
@click.argument("name")
@click.pass_context
def hold_release(ctx: click.Context, name: str) -> None:
    """Release hold NAME (recorded in the ledger)."""
    from mailvault.compliance import release_hold

    vault = vault_from(ctx)
    with vault.write_lock("hold release"):
        release_hold(vault, name)
    click.echo(f"hold {name!r} released")


@cli.group()
def retention() -> None:
    """Retention: purge messages past [retention] keep_days that no hold protects."""


@retention.command(name="apply")
@click.option("--dry-run", is_flag=True, help="List what would be purged; change nothing.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def retention_apply(ctx: click.Context, dry_run: bool, as_json: bool) -> None:
    """Purge (or with --dry-run list) messages past retention and not under any hold.

    Each purge removes the blob, the catalog's parse rows and the index document, and leaves a
    tombstone in the ledger.  The index is brought up to date first (holds are matched through
    it), so a message archived since the last `mailvault index` cannot escape a hold.  A
    message retention cannot prove free of holds and past retention is not purged, and named
    with the reason (exit 1): its blob missing, unreadable or corrupt, it is not in the index,
    or the catalog's date for it disagrees with its blob or the ledger.

    Example: mailvault retention apply --dry-run
    """
    from mailvault.compliance import apply, plan

    vault = vault_from(ctx)
    # The plan outlives the write lock: it is printed after the lock is released.
    with contextlib.ExitStack() as stack:
        with vault.write_lock("retention apply"):
            # Holds are matched through the search index: every message must be in it first,
            # or one archived (or parsed) since the last `mailvault index` would escape its
            # hold.
            _index_first(vault, "retention needs an up-to-date index to honour legal holds")
            candidates = stack.enter_context(plan(vault))
            counts = candidates.counts()
            doomed = counts["expired"] - counts["held"] - counts["kept"]
            purged = 0
            if dry_run:
                _audit_retention(vault, "dry-run", doomed, counts)
            else:
                # as an export: recorded before the first purge, so a killed run shows as
                # started
                _audit_retention(vault, "started", doomed, counts)
                purged = apply(
                    vault,
                    candidates,
                    lambda n: _audit_retention(vault, "finished", n, {**counts, "purged": n}),
                )
            rebuilt = not dry_run and _compact_index(vault)
        if as_json:
            report = {
                "schema": "mailvault/retention/v1",
                "dry_run": dry_run,
                **counts,
                "purged": purged,
                "index_rebuilt": rebuilt,
            }
            print_json_list(report, "messages", candidates, lambda c: c.as_json())
        else:
            _print_plan(candidates, counts, dry_run, purged, rebuilt)
    if counts["kept"]:
        ctx.exit(1)


def _print_plan(
    candidates: Plan, counts: dict[str, int], dry_run: bool, purged: int, rebuilt: bool
) -> None:
    """A line per candidate, in the plan's order, then the counts (on stderr)."""
    held, kept = counts["held"], counts["kept"]
    for c in candidates:
        if c.held_by:
            verb = "held by " + ", ".join(c.held_by)
        elif c.kept:
            verb = f"not purged: {escape(c.kept)}"
        else:
            verb = "would purge" if dry_run else "purged"
        click.echo(f"{c.sha256[:12]} {c.age_basis[:10]} keep {c.keep_days}d: {verb}")
    click.echo(
        f"retention: {counts['expired']} past retention, {held} held, "
        + (
            f"{kept} not purged (cannot be proven free of holds or past retention), "
            if kept
            else ""
        )
        + f"{counts['expired'] - held - kept if dry_run else purged} "
        + ("to purge" if dry_run else "purged")
        + ("; the index was rebuilt without the purged text" if rebuilt else "")
        + ("; run `mailvault verify`" if kept else ""),
        err=True,
    )


def _audit_retention(vault: Vault, stage: str, results: int, counts: dict[str, int]) -> None:
    """An audit-trail entry of `retention apply` (who purged, or looked at what would be): a
    dry run's, or one before the purge (``results``: the messages to purge) and one after it
    (the messages purged).  It fails closed like every audit entry: nothing is purged without
    the first."""
    from mailvault.audit import record

    detail: dict[str, Any] = {"stage": stage, **counts}
    record(vault.root, "retention", None, results, **detail)


def _compact_index(vault: Vault) -> bool:
    """Rebuild the index if deleted documents linger in its files (a purge deletes a message's
    document, but Tantivy keeps its text in the segment until a merge rewrites it, and has no
    call to force one): purged mail must not be readable from the index files or their
    backups.  Also finishes a rebuild a killed run left undone.  Whether it rebuilt."""
    from mailvault import index as ix
    from mailvault.indexer import reindex

    if not ix.holds_deleted_documents(vault.index_path):
        return False
    reindex(vault)
    return True


def _index_first(vault: Vault, why: str) -> None:
    """Index whatever is not indexed yet (as `mailvault index` does), and check that the
    index holds exactly the catalog's messages, since holds are matched through it; the caller
    holds the write lock.  A failure stops the command before it changes anything."""
    from mailvault.errors import MailvaultError
    from mailvault.indexer import catch_up

    try:
        catch_up(vault, exact=True)
    except MailvaultError as exc:
        raise MailvaultError(f"{why}, and indexing failed: {exc}; nothing was changed") from None
