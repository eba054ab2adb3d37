"""SIGTERM taken as Ctrl-C, for the click CLI and the search fast path alike (standard library
only, so that the fast path imports nothing heavier)."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

from mailvault.errors import Terminated


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (a service manager's stop, `timeout`, `kill`) stops any command as Ctrl-C does:
    what it committed is kept, what it had under way is rolled back (an `export --append`
    takes its bytes back out of the mbox, a fetch records its run as interrupted), and it
    exits 143 with one line, instead of dying between two steps with no word and its
    temporary files, journal and half-written target left for the next run to clear."""

    def terminate(signum: int, frame: object) -> None:
        raise Terminated

    try:
        previous = signal.signal(signal.SIGTERM, terminate)
        installed = True
    except ValueError:  # not the main thread (a caller's own thread): signals are not ours
        previous, installed = None, False
    try:
        yield
    finally:
        if installed:
            signal.signal(signal.SIGTERM, previous)
