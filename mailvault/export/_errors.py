"""The mapping of OS errors on an export target to one-line ``ExportError`` messages."""

from __future__ import annotations

import errno
from pathlib import Path

from mailvault.errors import ExportError

__all__ = ["ExportError", "target_error"]


def target_error(action: str, path: Path, exc: OSError) -> ExportError:
    """One line naming what failed on ``path`` and what to do about it."""
    code = exc.errno
    if code == errno.ENOSPC:
        return ExportError(
            f"disk full while {action} {path}; free space on that filesystem or choose another "
            "--out, then rerun (no half-written message was left behind)"
        )
    if code == errno.EDQUOT:
        return ExportError(
            f"disk quota exceeded while {action} {path}; raise the quota or choose another --out"
        )
    if code == errno.EFBIG:
        return ExportError(
            f"file too large while {action} {path} (a filesystem or `ulimit -f` limit); raise "
            "the limit, or for an mbox use --format maildir or eml (no half-written message was "
            "left)"
        )
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return ExportError(
            f"cannot write {path} ({exc.strerror}); choose a writable --out or fix its permissions"
        )
    if code == errno.ENOTDIR:
        return ExportError(
            f"cannot use {path}: part of that path is a file, not a directory; choose another --out"
        )
    return ExportError(f"{action} {path} failed: {exc.strerror or exc}; check the --out location")
