"""Process-pool workers that never outlive the command that started them."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal

_PARENT = 0  # in a pool worker: the pid of the command that started it


def command_pid() -> int:
    """The pid of the running command: the process itself, or a worker's parent.  Temporary
    files carry it, so that a later run can tell those of a killed command from a live one's."""
    return _PARENT or os.getpid()


def init_worker(parent: int) -> None:
    """Call first thing in a pool worker (``initializer``), with the parent's pid.

    Ctrl-C reaches the whole process group, and so does a service manager's SIGTERM (which the
    parent takes as Ctrl-C); a worker ignores both and finishes its task, so that
    it is never interrupted between creating a file and recording it, and the parent, which
    gets the KeyboardInterrupt, shuts the pool down and removes what the tasks wrote.  A
    worker whose parent is killed (SIGKILL, the OOM killer) would otherwise block on its result
    pipe forever; Linux kills it with the parent instead (PR_SET_PDEATHSIG).
    """
    global _PARENT
    _PARENT = parent
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pr_set_pdeathsig = 1
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the pipe's EOF is all there is
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


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
