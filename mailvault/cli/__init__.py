"""The `mailvault` command line: parse arguments, call one use-case function, print.

Exit codes (documented in docs/cli.md):
    0  success
    1  finished, but something failed or was found (an account failed; no search hits;
       verify found problems)
    2  usage or configuration error
    3  runtime error (vault locked, disk full, catalog unreadable, ...)
  130  interrupted
  143  terminated (SIGTERM): stopped as by Ctrl-C (a fetch's run is recorded as interrupted)

Standard output or error closed by its reader (`mailvault fetch | head -1`) does not change a
command's exit status: the command finishes its work and exits as it would have, what it
writes after the close is discarded.  Standard output that cannot be written for another
reason (a full disk; closed by the caller, `>&-`) is an error of its own: exit 3 (or the
command's own failure status), once the work is done.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import importlib
import io
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from mailvault import __version__
from mailvault._signals import leave_now, signalled, sigterm_interrupts, stop_code
from mailvault._stdio import CLOSED, reopen_closed, stdout_error
from mailvault._text import one_line, undecodable
from mailvault.errors import MailvaultError, from_storage_error
from mailvault.redact import redact

# Command name -> module under mailvault.cli that defines it.  Commands load lazily so that
# `mailvault search` imports the search path only (no catalog library, no parser, no TLS).
COMMAND_MODULES = {
    "init": "vault_cmd",
    "fetch": "fetch_cmd",
    "check": "fetch_cmd",
    "verify": "verify_cmd",
    "ledger": "verify_cmd",
    "index": "search_cmd",
    "reindex": "search_cmd",
    "search": "search_cmd",
    "show": "search_cmd",
    "export": "export_cmd",
    "import": "export_cmd",
    "audit": "compliance_cmd",
    "hold": "compliance_cmd",
    "retention": "compliance_cmd",
}


class _RedactingFormatter(logging.Formatter):
    """Log lines may carry exception text from a server, which may quote a password, and
    line breaks or terminal escapes (``one_line``)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        return one_line(super().formatMessage(record))  # the line; a traceback after it is not


def _check_text_arguments(ctx: click.Context) -> None:
    """Refuse, as a usage error, a text argument (a query, a name, a reason, an id) that is not
    valid UTF-8: it would otherwise fail as a UnicodeEncodeError traceback wherever the text
    is first encoded (the index, the catalog, the terminal), possibly after work was done.

    Paths are exempt (``click.Path``, ``click.File``): a file name may be any bytes, and Python
    hands such a name back to the OS unchanged.  Every parameter of every context from the
    command up to `mailvault` is checked, once, before the command's callback runs; the
    search fast path (``search.fast_main``) defers any such argument to here.
    """
    chain: list[click.Context] = []
    current: click.Context | None = ctx
    while current is not None:
        chain.append(current)
        current = current.parent
    for each in reversed(chain):
        for param in each.command.params:
            if isinstance(param.type, click.Path | click.File):
                continue
            value = each.params.get(param.name or "")
            values = value if isinstance(value, tuple | list) else (value,)
            for text in values:
                if isinstance(text, str) and undecodable(text):
                    raise _not_utf8(chain[-1], text)


def _not_utf8(root: click.Context, text: str) -> MailvaultError:
    """The one-line usage error for a text argument with undecodable bytes, naming which
    argument (counted as the shell does, after `mailvault`) and showing the bad bytes."""
    from mailvault.cli._common import escape
    from mailvault.errors import UsageError

    argv: list[str] = root.meta.get(_ARGV, [])
    where = next(
        (f"argument {n}" for n, arg in enumerate(argv, 1) if undecodable(arg) and text in arg),
        "an argument",
    )
    return UsageError(
        f"{where} is not valid UTF-8 text: {escape(text)}; give it in UTF-8 (is the terminal "
        "or the script in another encoding?)"
    )


_ARGV = "mailvault.argv"  # ctx.meta key: the arguments as given, to name one by position


class _CheckedCommand(click.Command):
    """A command whose text arguments are checked for undecodable bytes before it runs."""

    def invoke(self, ctx: click.Context) -> Any:
        _check_text_arguments(ctx)
        return super().invoke(ctx)


class _CheckedGroup(click.Group):
    """A command group (`hold`, `ledger`, ...) whose commands are ``_CheckedCommand``s."""

    command_class = _CheckedCommand
    group_class = type  # its subgroups are _CheckedGroups too


class MailvaultGroup(click.Group):
    """Loads commands on demand; turns every MailvaultError into one line and its exit code.

    Commands and groups defined on it check their text arguments (``_check_text_arguments``).
    """

    command_class = _CheckedCommand
    group_class = _CheckedGroup

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta[_ARGV] = list(args)  # the whole command line, to name a bad argument by place
        return super().parse_args(ctx, args)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(self._available()))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self._available():
            importlib.import_module(f"mailvault.cli.{COMMAND_MODULES[cmd_name]}")
        return self.commands.get(cmd_name)

    @staticmethod
    def _available() -> dict[str, str]:
        here = Path(__file__).parent
        return {n: m for n, m in COMMAND_MODULES.items() if (here / f"{m}.py").exists()}

    def invoke(self, ctx: click.Context) -> Any:
        try:
            with sigterm_interrupts():
                return super().invoke(ctx)
        except MailvaultError as exc:
            click.echo(f"mailvault: error: {one_line(str(exc))}", err=True)
            ctx.exit(exc.exit_code)
        except BrokenPipeError:  # `mailvault show --raw ID | head`: the reader has enough
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # so the flush at exit does not fail again
            ctx.exit(0)
        except Exception as exc:  # the net for disk and SQLite errors no library code mapped
            error = from_storage_error(exc, f"running `{ctx.invoked_subcommand or ctx.info_name}`")
            if error is None:
                raise
            click.echo(f"mailvault: error: {one_line(str(error))}", err=True)
            ctx.exit(error.exit_code)
        except KeyboardInterrupt as exc:
            stopped = stop_code(exc)
            click.echo(f"mailvault: {'terminated' if stopped == 143 else 'interrupted'}", err=True)
            if not signalled():
                ctx.exit(stopped)
        # Stopped by a signal.  Out of the except clause the traceback's frames are gone, and
        # with them the generators they held, whose finally clauses (a staged run's removal)
        # run now, not at an interpreter shutdown that ``leave_now`` skips.
        gc.collect()
        leave_now(stopped)


@click.group(cls=MailvaultGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mailvault")
@click.option(
    "--vault",
    "vault_path",
    type=click.Path(path_type=Path, file_okay=False),
    envvar="MAILVAULT_VAULT",
    default=None,
    help="Vault directory [env MAILVAULT_VAULT; default $XDG_DATA_HOME/mailvault].",
)
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
@click.pass_context
def cli(ctx: click.Context, vault_path: Path | None, verbose: int, quiet: bool) -> None:
    """mailvault: archive POP3 mailboxes into a lossless, searchable vault."""
    os.umask(0o077)  # everything mailvault writes (vault, exports, traces) is private
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_RedactingFormatter("mailvault: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    # the default is looked for only by a command that opens a vault (`--help` needs none)
    ctx.obj = {"vault_path": vault_path, "quiet": quiet}


class _GuardedOutput(io.RawIOBase):
    """File descriptor 1 or 2 under the CLI's text stream: a failed write is recorded, not
    raised, so a reader that closes the pipe early (or a full disk under the output) cannot
    cut a command short or hide its exit status; ``main`` reports it afterwards."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd
        self.error: OSError | None = None
        self.closed_by_caller = fd in CLOSED  # /dev/null stands in for it (``reopen_closed``)

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.fd

    def isatty(self) -> bool:
        return os.isatty(self.fd)

    def write(self, data: Any) -> int:
        if self.error is None:
            try:
                if self.closed_by_caller:  # what is written is lost: said so at the end
                    raise OSError(errno.EBADF, os.strerror(errno.EBADF))
                return os.write(self.fd, data)
            except OSError as exc:
                self.error = exc
        return len(data)


def _guard(name: str) -> _GuardedOutput | None:
    """Put ``sys.<name>`` on a ``_GuardedOutput`` (same encoding and buffering)."""
    stream = getattr(sys, name)
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file: leave it alone
        return None
    with contextlib.suppress(OSError, ValueError):
        stream.flush()
    raw = _GuardedOutput(fd)
    wrapper = io.TextIOWrapper(
        io.BufferedWriter(raw),
        encoding=stream.encoding,
        errors=stream.errors,
        # stderr: every line out at once, as Python's own stderr (a progress line's ending
        # "\n" sat in the buffer until exit, after the summary printed on stdout)
        line_buffering=stream.line_buffering or name == "stderr",
        write_through=name == "stderr",
    )
    setattr(sys, name, wrapper)
    return raw


def main() -> None:
    reopen_closed()  # done already by `mailvault`; not when main() is called by another way
    out = _guard("stdout")
    _guard("stderr")  # its errors are dropped: there is nowhere left to report them
    try:
        cli(prog_name="mailvault")
        code: Any = 0
    except SystemExit as exc:
        code = exc.code
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    failure = out.error if out is not None else None
    if failure is not None and failure.errno != errno.EPIPE:
        # Only the output is at fault (a full disk under `> file`, closed): the vault is not.
        click.echo(stdout_error(failure), err=True)
        code = code if isinstance(code, int) and code != 0 else 3
    sys.exit(code)
