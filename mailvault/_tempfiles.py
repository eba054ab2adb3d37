"""Temporary files that say which command wrote them, so that a later run can clear those of a
command killed with SIGKILL (no handler runs then) without touching a live one's."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from pathlib import Path

from mailvault._workers import command_pid

_TEMP = re.compile(r"^\..*\.tmp-(\d+)-[0-9a-z-]+$")


def temp_path(directory: str | Path, name: str, tag: str = "") -> str:
    """``<directory>/.<name>.tmp-<pid>-<tag><random>``: hidden, and carrying the pid of the
    command writing it (see ``remove_orphans``)."""
    return f"{directory}/.{name}.tmp-{command_pid()}-{tag}{secrets.token_hex(6)}"


def remove_orphans(
    directory: str | Path, prefix: str = ".", pattern: re.Pattern[str] = _TEMP
) -> int:
    """Remove temporary files an export killed with SIGKILL left in ``directory``: names that
    start with ``prefix`` and match ``pattern`` (by default those of ``temp_path``), whose
    process, the pattern's first group, no longer runs; a live export's are left alone.
    Returns how many were removed."""
    removed = 0
    try:
        names = os.listdir(directory)
    except OSError:
        return 0
    for name in names:
        match = pattern.match(name)
        if match is None or not name.startswith(prefix) or running(int(match.group(1))):
            continue
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(directory, name))
            removed += 1
    return removed


def running(pid: int) -> bool:
    """Whether the process exists and is not a zombie (a killed export's workers may stay
    zombies for a while if whoever inherits them is slow to reap them)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in (b"Z", b"X")
