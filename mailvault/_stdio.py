"""Standard input, output and error that the caller closed (`mailvault fetch >&-`, a daemon
wrapper, a cron set-up that closes descriptors), made safe before anything else runs.

Standard library only: the search fast path (``search.fast_main``) goes through here too.
"""

from __future__ import annotations

import errno
import io
import os
import sys

CLOSED: set[int] = set()  # the standard descriptors (0, 1, 2) found closed at start


class ClosedOutput(io.RawIOBase):
    """Standard output the caller closed: fd 1 holds /dev/null (so that no file takes it),
    and every write fails as a write to the closed descriptor would, with EBADF, so that the
    output's loss is reported (``stdout_error``) instead of passing silently."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.fd

    def write(self, data: object) -> int:
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))


def reopen_closed() -> None:
    """Put /dev/null on each of descriptors 0, 1 and 2 that the caller closed, first thing.

    A closed standard descriptor is the lowest free one, so the next file opened gets it: the
    vault's lock file became descriptor 1, and whatever was printed would have gone into it.
    Python also sets ``sys.stdout`` (``stdin``, ``stderr``) to None then, and the first
    ``print`` or ``isatty()`` raised AttributeError: `fetch >&- 2>&-` archived nothing.
    Standard input and error on /dev/null read nothing and drop everything (there is nowhere
    to report an error); standard output is a ``ClosedOutput``.  Idempotent.
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError as exc:
            if exc.errno != errno.EBADF:
                continue
            got = os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)
            if got != fd:  # only if a lower descriptor was free, which the loop rules out
                os.dup2(got, fd)
                os.close(got)
            CLOSED.add(fd)
    if 0 in CLOSED and sys.stdin is None:
        sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115 (the process's)
    if 1 in CLOSED and sys.stdout is None:
        raw = io.BufferedWriter(ClosedOutput(1))
        sys.stdout = io.TextIOWrapper(raw, encoding="utf-8", errors="backslashreplace")
    if 2 in CLOSED and sys.stderr is None:
        sys.stderr = open(  # noqa: SIM115 (the process's)
            2, "w", encoding="utf-8", errors="backslashreplace", closefd=False
        )


def stdout_error(exc: OSError) -> str:
    """The one-line error when standard output could not be written: closed by the caller,
    or unwritable for another reason (a full disk under `> file`).  The command's work is
    done either way; only its report is lost."""
    if exc.errno == errno.EBADF:
        return (
            "mailvault: error: standard output is closed, so the output is lost (the "
            "command's work is not): redirect it (`> /dev/null` to discard it) instead of "
            "closing it"
        )
    return (
        f"mailvault: error: standard output could not be written ({exc.strerror or exc}); "
        "the output is incomplete, the command's work is not: write the output elsewhere"
    )
