"""Entry point of the `mailvault` command (and `python -m mailvault`).

`mailvault search` is the investigator's inner loop, so it gets a start-up path that imports
neither click nor the rest of the CLI (``mailvault.search.fast_main``); anything that path does
not handle, including every error message worth a full explanation, goes to the click CLI.
"""

from __future__ import annotations

import sys


def main() -> None:
    from mailvault._stdio import reopen_closed

    reopen_closed()  # before any file is opened: it would take a closed fd 0, 1 or 2
    argv = sys.argv[1:]
    if "search" in argv:
        from mailvault.search import fast_main

        code = fast_main(argv, exiting=True)
        if code is not None:
            _exit_now(code)
    from mailvault.cli import main as cli_main

    cli_main()


def _exit_now(code: int) -> None:
    """Exit without the interpreter's teardown (module clean-up, the index reader's threads):
    a few ms of every search.  Safe here: the audit entry is committed and nothing else is
    pending once the output is flushed."""
    import os

    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (BrokenPipeError, OSError):
        pass
    os._exit(code)


if __name__ == "__main__":
    main()
