"""`mailvault fetch` and `mailvault check`."""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING

import click

from mailvault import __version__
from mailvault._text import one_line
from mailvault.cli import cli
from mailvault.cli._common import IndexProgress, print_json, vault_from
from mailvault.errors import MailvaultError, UsageError
from mailvault.fetch import AccountReport, fetch_accounts
from mailvault.redact import redact

if TYPE_CHECKING:
    from mailvault.indexer import IndexReport


class _TraceFile:
    """Thread-safe writer of the POP3 dialogue: our commands are rendered redacted by the
    session, and what the server says passes ``redact`` (it may quote a password back)."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.lock = threading.Lock()

    def __call__(self, line: str) -> None:
        now = time.time()
        stamp = f"{time.strftime('%H:%M:%S', time.localtime(now))}.{int(now * 1000) % 1000:03d}"
        with self.lock:
            self.stream.write(f"{stamp} {redact(line)}\n")


def _open_trace(path: Path, names: list[str]) -> IO[str]:
    """Open the trace for appending (0600 if new: it names users and servers), one header line
    per run so that runs appended to the same file stay apart."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    except OSError as exc:
        raise UsageError(
            f"cannot write the trace file {path}: {exc.strerror}; choose another --trace path"
        ) from None
    stream = os.fdopen(fd, "a", encoding="utf-8")
    stream.write(
        f"# mailvault {__version__} fetch started {time.strftime('%Y-%m-%d %H:%M:%S %z')}, "
        f"accounts: {', '.join(names)}\n"
    )
    return stream


class _Progress:
    """One status line on a terminal: messages, bytes and rate, for all accounts together
    when there are several, each account's count after that; cut to the terminal's width (a
    longer line wraps, and each update then leaves a line of debris)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started = time.monotonic()
        self.last = 0.0
        self.state: dict[str, tuple[int, int, int]] = {}

    def __call__(self, account: str, done: int, total: int, bytes_done: int) -> None:
        with self.lock:
            self.state[account] = (done, total, bytes_done)
            now = time.monotonic()
            if now - self.last < 0.2 and done != total:
                return
            self.last = now
            line = self.line(max(now - self.started, 1e-6))
            width = shutil.get_terminal_size((80, 24)).columns - 1
            sys.stderr.write("\r" + line[:width] + "\033[K")
            sys.stderr.flush()

    def line(self, elapsed: float) -> str:
        d, t, b = (sum(values) for values in zip(*self.state.values(), strict=True))
        overall = f"{d}/{t} msgs {b / 1e6:,.1f} MB ({d / elapsed:,.0f} msg/s)"
        if len(self.state) == 1:
            return f"{next(iter(self.state))}: {overall}"
        each = "  ".join(f"{a} {d}/{t}" for a, (d, t, _) in sorted(self.state.items()))
        return f"{len(self.state)} accounts: {overall}  {each}"

    def finish(self) -> None:
        if self.state:
            sys.stderr.write("\n")
            sys.stderr.flush()


@cli.command()
@click.argument("accounts", nargs=-1)
@click.option(
    "--jobs",
    "-j",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Accounts fetched concurrently.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the run report as JSON.")
@click.option(
    "--dry-run", is_flag=True, help="List what would be fetched and deleted; change nothing."
)
@click.option("--no-index", is_flag=True, help="Skip parsing and indexing what was committed.")
@click.option(
    "--trace",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Append the POP3 dialogue to FILE (created 0600), each line with the time and the "
    "account; credentials redacted.",
)
@click.pass_context
def fetch(
    ctx: click.Context,
    accounts: tuple[str, ...],
    jobs: int,
    as_json: bool,
    dry_run: bool,
    no_index: bool,
    trace: Path | None,
) -> None:
    """Download new mail from the configured POP3 accounts (all of them if none are named).

    A message is deleted on the server (delete = "after-commit") only after its bytes are
    durable in the vault and its catalog row is committed.

    Example: mailvault fetch --jobs 4 --json
    """
    vault = vault_from(ctx)
    names = list(dict.fromkeys(accounts)) or sorted(vault.config.accounts)  # each once
    if not names:
        raise UsageError(
            f"no accounts configured in {vault.config_path}; add an [accounts.NAME] table"
        )
    selected = [vault.config.account(name) for name in names]
    show_progress = sys.stderr.isatty() and not as_json and not ctx.obj["quiet"]
    progress = _Progress() if show_progress else None
    trace_stream = _open_trace(trace, names) if trace else None
    started = time.time()
    index_report: IndexReport | None = None
    index_error: str | None = None
    reports: list[AccountReport] = []
    try:
        with vault.write_lock("fetch"):
            reports = fetch_accounts(
                vault,
                selected,
                jobs=jobs,
                dry_run=dry_run,
                trace=_TraceFile(trace_stream) if trace_stream else None,
                progress=progress,
                reports_if_interrupted=reports,
            )
            if progress:
                progress.finish()
                progress = None
            if not dry_run and not no_index:
                from mailvault.indexer import catch_up, lag_note

                indexing = IndexProgress() if show_progress else None
                try:
                    index_report = catch_up(vault, progress=indexing)
                except MailvaultError as exc:  # the mail is safe; only the derived index lags
                    index_error = lag_note(exc)
                except KeyboardInterrupt:
                    index_error = INDEX_INTERRUPTED
                    raise
                finally:
                    if indexing:
                        indexing.finish()
    except KeyboardInterrupt:
        # What was archived before the stop is said, as a finished run says it; the caller
        # then prints "interrupted" or "terminated" and exits 130 or 143.
        if progress:
            progress.finish()
            progress = None
        if reports:
            _report(reports, as_json, dry_run, started, index_report, index_error, True)
        raise
    finally:
        if trace_stream:
            trace_stream.close()
        if progress:
            progress.finish()
    failed = [r for r in reports if r.status == "failed"]
    _report(reports, as_json, dry_run, started, index_report, index_error, False)
    if index_error:
        click.echo(f"mailvault: warning: {one_line(index_error)}", err=True)
    if any(r.config_error for r in failed):  # the other accounts still ran
        ctx.exit(2)
    if failed or index_error:
        ctx.exit(1)


INDEX_INTERRUPTED = (
    "indexing was interrupted; what was fetched is archived, and the next fetch, import or "
    "`mailvault index` indexes it"
)


def _report(
    reports: list[AccountReport],
    as_json: bool,
    dry_run: bool,
    started: float,
    index_report: IndexReport | None,
    index_error: str | None,
    interrupted: bool,
) -> None:
    """The run report: one JSON document, or a line per account (warnings and errors on
    stderr) and one for the indexing."""
    if as_json:
        print_json(
            {
                "schema": "mailvault/fetch-report/v1",
                "ok": not interrupted and not any(r.status == "failed" for r in reports),
                "interrupted": interrupted,
                "dry_run": dry_run,
                "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
                "seconds": round(time.time() - started, 3),
                "accounts": [r.as_json() for r in reports],
                "index": index_report.as_json() if index_report else None,
                "index_error": index_error,
            }
        )
        return
    for r in reports:
        verb = "would fetch" if dry_run else "fetched"
        line = (
            f"{r.account}: listed {r.listed}, new {r.new}, {verb} "
            f"{r.new if dry_run else r.fetched}, "
            f"{f'download {r.would_check} again to check, ' if r.would_check else ''}"
            f"duplicates {r.duplicates}, "
            f"{'would delete' if dry_run else 'deleted'} "
            f"{r.would_delete if dry_run else r.deleted}, "
            f"{f'{r.would_bytes:,} bytes listed' if dry_run else f'{r.bytes:,} bytes'}"
            f"{f', {r.retries} retries' if r.retries else ''} [{r.status}]"
        )
        click.echo(line)
        # they quote the server (a UIDL, an -ERR text): anything may be in them
        for w in r.warnings:
            click.echo(f"{r.account}: warning: {one_line(w)}", err=True)
        for e in r.errors:
            click.echo(f"{r.account}: error: {one_line(e)}", err=True)
    if index_report is not None and (index_report.parsed or index_report.indexed):
        click.echo(
            f"indexed {index_report.indexed} messages ({index_report.unreadable} unreadable, "
            f"{index_report.defective} with defects) in {index_report.seconds:.1f} s"
        )
    if interrupted and index_error:
        click.echo(f"mailvault: warning: {one_line(index_error)}", err=True)


@cli.command()
@click.argument("account")
@click.option("--json", "as_json", is_flag=True, help="Print the steps as JSON.")
@click.pass_context
def check(ctx: click.Context, account: str, as_json: bool) -> None:
    """Diagnose an account step by step: TCP, TLS certificate, CAPA, login, STAT.

    Example: mailvault check journal
    """
    from mailvault.check import run_check

    vault = vault_from(ctx)
    steps = []
    for step in run_check(vault.config.account(account)):
        steps.append(step)
        if not as_json:
            mark = ("warn" if step.warning else "ok  ") if step.ok else "FAIL"
            # a step quotes the server (its greeting, an -ERR text): anything may be in it
            click.echo(f"[{mark}] {step.name:8} {one_line(step.detail)}")
            if step.hint:
                click.echo(f"       {'':8} hint: {one_line(step.hint)}")
    ok = all(s.ok for s in steps)
    if as_json:
        print_json(
            {
                "schema": "mailvault/check/v1",
                "ok": ok,
                "account": account,
                "steps": [s.as_json() for s in steps],
            }
        )
    if not ok:
        ctx.exit(2 if any(s.config for s in steps if not s.ok) else 1)
