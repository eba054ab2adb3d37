"""Process-pool workers that never outlive the command that started them."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import threading

from mailvault._parent_only import close_parent_only

_PARENT = 0  # in a pool worker: the pid of the command that started it


def command_pid() -> int:
    """The pid of the running command: the process itself, or a worker's parent.  Temporary
    files carry it, so that a later run can tell those of a killed command from a live one's."""
    return _PARENT or os.getpid()


def init_worker(parent: int) -> None:
    """Call first thing in a pool worker (``initializer``), with the parent's pid.

    Ctrl-C reaches the whole process group; a worker ignores it and finishes its task, so that
    it is never interrupted between creating a file and recording it, and the parent, which
    gets the KeyboardInterrupt, shuts the pool down and removes what the tasks wrote.  So does
    a SIGTERM sent to the whole group (`kill -- -PGID`, a service manager's stop), which the
    parent takes as Ctrl-C (``_parents_sigterm_only``).  A worker whose parent is killed
    (SIGKILL, the OOM killer) would otherwise block on its result pipe forever; Linux kills it
    with the parent instead (PR_SET_PDEATHSIG).
    """
    global _PARENT
    _PARENT = parent
    close_parent_only()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _parents_sigterm_only(parent)
    pr_set_pdeathsig = 1
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the pipe's EOF is all there is
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _parents_sigterm_only(parent: int) -> None:
    """End the worker on a SIGTERM its parent sends, and on no other.

    The pool sends SIGTERM to stop the other workers when one died, and waits for them to
    end: ignored, it waited forever for a worker blocked on its full result pipe.  Dying of
    one sent to the whole group, though, a worker left a half-written file no one knew of,
    and the parent's pool could hang on its dead workers' pipes.  Only the sender tells the
    two apart, so the signal is blocked and taken by a thread that can see who sent it."""
    term = {signal.SIGTERM}
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the handler inherited from the CLI
    signal.pthread_sigmask(signal.SIG_BLOCK, term)

    def wait() -> None:
        while signal.sigwaitinfo(term).si_pid != parent:
            pass
        os._exit(128 + signal.SIGTERM)

    threading.Thread(target=wait, name="parents-sigterm", daemon=True).start()


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
LARGE_ALLOCATION = 1024 * 1024


def return_large_blocks() -> None:
    """Have glibc give every block of 1 MiB or more its own mapping, returned on free.

    By default glibc raises that threshold after the first large free (up to 32 MiB) and keeps
    freed blocks in the heap: indexing, which holds a message's text (up to megabytes) for a
    moment and then the next one's, kept its peak for the rest of the run (a reindex of forty
    8 MB text messages: about 730 MB, 370 MB with this).  Set before the parse pool forks, so
    its workers inherit it; elsewhere than glibc, nothing happens."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, LARGE_ALLOCATION)
    except (OSError, AttributeError):
        pass
