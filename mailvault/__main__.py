"""Entry point of the `mailvault` command (and `python -m mailvault`).

`mailvault search` is the investigator's inner loop, so it gets a start-up path that imports
neither click nor the rest of the CLI (``mailvault.search.fast_main``); anything that path does
not handle, including every error message worth a full explanation, goes to the click CLI.
"""

from __future__ import annotations

import sys


def main() -> None:
    argv = sys.argv[1:]
    if "search" in argv:
        from mailvault.search import fast_main

        code = fast_main(argv)
        if code is not None:
            sys.exit(code)
    from mailvault.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
