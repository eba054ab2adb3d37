"""Descriptors a forked pool worker must not keep (standard library only: the search path
imports the vault module, which registers its lock here)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

_PARENT_ONLY: set[int] = set()


@contextlib.contextmanager
def parent_only(fd: int) -> Iterator[None]:
    """While in this block, a pool worker forked from this process closes its copy of ``fd``
    (``close_parent_only``, from ``_workers.init_worker``).

    For the vault's lock: a flock is held as long as any descriptor of it is open, so a worker
    that outlived its command (a pool whose shutdown never ended) kept the vault locked for
    every later run, "locked by another process" with no pid to kill."""
    _PARENT_ONLY.add(fd)
    try:
        yield
    finally:
        _PARENT_ONLY.discard(fd)


def close_parent_only() -> None:
    """In a freshly forked worker: close the descriptors its parent registered."""
    for fd in _PARENT_ONLY:
        with contextlib.suppress(OSError):
            os.close(fd)
    _PARENT_ONLY.clear()
