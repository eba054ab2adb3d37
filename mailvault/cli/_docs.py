"""Render docs/cli.md from the click commands, so the reference can never drift from the code.

python -m mailvault.cli._docs > docs/cli.md      (tests/test_docs.py checks it is current)
"""

from __future__ import annotations

import click

from mailvault.cli import cli, commands  # noqa: F401

HEADER = """\
# mailvault command line

Generated from the code by `python -m mailvault.cli._docs > docs/cli.md`; a test fails when it
is out of date.

Global options come before the command: `mailvault [--vault PATH] [-v|-q] COMMAND ...`. The
vault is `--vault`, else `$MAILVAULT_VAULT`, else `$XDG_DATA_HOME/mailvault`.

## Exit codes

| code | meaning |
|---:|---|
| 0 | success |
| 1 | finished, but something failed or was found: an account failed after its retries (`fetch` counts a full disk as the account's failure, its error naming it), or the server refused to hand out or delete a message (the others completed); `search` found nothing (as grep); `check`/`verify`/`ledger check` found a problem (for `verify`: an error or a warning; notes alone exit 0); `import` rejected an entry; `retention apply` did not purge a message it cannot prove free of holds and past retention (its blob missing or corrupt, its date edited) |
| 2 | usage or configuration error: bad arguments, invalid `mailvault.toml`, unknown account, no vault, invalid search query; an account's password source or `ca_file` unusable (`fetch` still runs the other accounts; `check` exits 2 for it too) |
| 3 | runtime error: vault locked by another process, disk full, unreadable catalog, damaged search index or one built by another version (`mailvault reindex` rebuilds it), a catalog migrated by a newer mailvault, a vault on a read-only filesystem for `search`/`show`/`export` (they write the audit trail), insecure vault permissions |
| 130 | interrupted (Ctrl-C): as 143 |
| 143 | terminated by SIGTERM (`kill`, `timeout`, a service manager's stop): any command stops as by Ctrl-C (what was committed is kept, what was under way is rolled back, an `export --append` takes its bytes back out of the mbox; a `fetch` run is recorded as interrupted, with its counts, and its report is printed, `--json` too, each account that did not finish marked `interrupted`); a second SIGINT or SIGTERM during that roll-back is ignored, with a line saying so, and a third ends the process at once (what is left is what kill -9 leaves, which the next run clears) |

A reader that closes the output early (`mailvault fetch | head -1`) does not change the exit code:
the command finishes its work and exits as it would have, and what it writes after the close is
discarded. Standard output that cannot be written for another reason (`> file` on a full disk)
exits 3 (or the command's own failure code) with an error naming standard output, not the vault.
So does standard output closed by the caller (`mailvault fetch >&-`, as some cron and daemon
wrappers leave it), once the command has written to it: the work is done all the same (a fetch
archives), the output is lost, and the error says `standard output is closed` (redirect it to
`/dev/null` to discard it). A closed standard input or error is taken as `/dev/null`.
"""


def _walk(command: click.Command, path: list[str]) -> list[tuple[list[str], click.Command]]:
    found = [(path, command)]
    if isinstance(command, click.Group):
        for name in sorted(command.commands):
            found.extend(_walk(command.commands[name], [*path, name]))
    return found


def render() -> str:
    parts = [HEADER]
    for path, command in _walk(cli, ["mailvault"]):
        settings = {"help_option_names": ["-h", "--help"], **command.context_settings}
        ctx = click.Context(
            command,
            info_name=" ".join(path),
            terminal_width=80,
            max_content_width=80,
            help_option_names=settings["help_option_names"],
        )
        title = " ".join(path)
        parts.append(f"\n## `{title}`\n\n```\n{command.get_help(ctx)}\n```\n")
    return "".join(parts)


if __name__ == "__main__":
    click.echo(render(), nl=False)
