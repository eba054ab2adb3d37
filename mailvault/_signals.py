"""SIGTERM taken as Ctrl-C, and a stop that is not itself stopped, for the click CLI and the
search fast path alike (standard library only, so that the fast path imports nothing heavier)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, NoReturn

from mailvault.errors import Terminated

ALREADY_STOPPING = (
    b"mailvault: already stopping: what was under way is being rolled back (a third signal "
    b"stops at once; the next run clears what is left)\n"
)


_received = 0  # SIGINTs and SIGTERMs taken by ``sigterm_interrupts`` in this process


def stop_code(exc: KeyboardInterrupt) -> int:
    """The exit status of a command Ctrl-C (130) or SIGTERM (``Terminated``, 143) stopped."""
    return 143 if isinstance(exc, Terminated) else 130


def signalled() -> bool:
    """Whether a signal (not code raising KeyboardInterrupt) is what stops the command."""
    return _received > 0


def leave_now(code: int) -> NoReturn:
    """End a command that a signal stopped, once its roll-back is done and its last line
    written, without the interpreter's shutdown: that resets the signal handlers to the
    default, so a second SIGTERM landing there killed the process (-15, not 143), and it
    waits for what a roll-back may have left running (a pool worker), which hung for good.
    What is left is what kill -9 leaves, which the next run clears."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    logging = sys.modules.get("logging")  # not imported for this: the search path has none
    if logging is not None:
        logging.shutdown()
    os._exit(code)


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (a service manager's stop, `timeout`, `kill`) stops any command as Ctrl-C does:
    what it committed is kept, what it had under way is rolled back (an `export --append`
    takes its bytes back out of the mbox, a fetch records its run as interrupted), and it
    exits 143 with one line, instead of dying between two steps with no word and its
    temporary files, journal and half-written target left for the next run to clear.

    Only the first SIGINT or SIGTERM interrupts.  A second one (Ctrl-C pressed twice, a
    service manager's SIGTERM to the group beside the user's) landing in the roll-back
    interrupted the roll-back itself: a fetch left its run recorded as running, a report
    that disagreed with the catalog, or hung for good in a worker pool's shutdown with the
    vault locked.  It is ignored now, with a line saying so; a third ends the process at once
    (``os._exit``, as safe as kill -9: the next run finishes the clean-up), for a roll-back
    that would not end."""
    signals = {signal.SIGINT: KeyboardInterrupt, signal.SIGTERM: Terminated}

    def stop(signum: int, frame: FrameType | None) -> None:
        global _received
        _received += 1
        if _received == 1:
            raise signals[signal.Signals(signum)]
        if _received == 2:
            with contextlib.suppress(OSError):
                os.write(2, ALREADY_STOPPING)
            return
        os._exit(128 + signum)

    previous: dict[signal.Signals, Callable[[int, FrameType | None], Any] | int] = {}
    try:
        for signum in signals:
            handler = signal.signal(signum, stop)
            if handler is not None:  # None: not set from Python, and cannot be set back
                previous[signum] = handler
    except ValueError:  # not the main thread (a caller's own thread): signals are not ours
        pass
    try:
        yield
    finally:
        if not _received:  # else the command is on its way out: a later signal still counts
            for signum, handler in previous.items():
                signal.signal(signum, handler)
