"""Read a Maildir tree: ``cur/`` and ``new/`` of the root and of every folder below it.

Folders are Maildir++ subfolders (``.Sent``, ``.Archive.2024``: dot-directories that are
Maildirs themselves) and nested Maildirs as mu and notmuch keep them (``work/``, ``work/old/``).
Other dot-directories (``.notmuch``, ``.git``) are not entered.  Only files in ``cur/`` and
``new/`` are messages, as the Maildir format says; a file in ``tmp/`` is a delivery still in
progress and is listed as skipped, and so is any stray file that is not a known piece of
metadata (``dovecot*``, ``maildirfolder``, ``subscriptions``, ``courier*``, ``.uidvalidity``,
an export manifest).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

from mailvault.importer._model import Event, Found, Rejected, Skipped, file_chunks

MESSAGE_DIRS = ("new", "cur")
_METADATA = re.compile(
    r"^(?:dovecot.*|maildirfolder|subscriptions|courier.*|\..*|manifest\.jsonl?|"
    r"\.?uidvalidity|mbsync.*)$"
)


def is_maildir(path: Path) -> bool:
    """A directory with cur/ or new/ (tmp/ is often missing from copies made with git or zip)."""
    return any((path / sub).is_dir() for sub in MESSAGE_DIRS)


def contains_maildir(path: Path, depth: int = 3) -> bool:
    if is_maildir(path):
        return True
    if depth == 0:
        return False
    try:
        children = sorted(p for p in path.iterdir() if p.is_dir())
    except OSError:
        return False
    return any(contains_maildir(child, depth - 1) for child in children)


def _entries(directory: Path) -> list[os.DirEntry[str]]:
    with os.scandir(directory) as it:
        return sorted(it, key=lambda e: e.name)


def listing(directory: Path) -> tuple[list[os.DirEntry[str]], Rejected | None]:
    """A directory's entries in name order; an unreadable one is a rejected entry of the
    report (the rest of the tree is still imported), not the end of the import."""
    try:
        return _entries(directory), None
    except OSError as exc:
        reason = f"cannot read this directory ({exc.strerror or exc}); nothing in it was imported"
        return [], Rejected(directory, None, reason)


def read_maildir(root: Path) -> Iterator[Event]:
    """Every message of the Maildir tree at ``root``, folder by folder, names in sorted order."""
    yield from _folder(root)


def _folder(folder: Path) -> Iterator[Event]:
    maildir = is_maildir(folder)
    if maildir:
        for sub in MESSAGE_DIRS:
            directory = folder / sub
            if not directory.is_dir():
                continue
            entries, failed = listing(directory)
            if failed is not None:
                yield failed
            for entry in entries:
                path = Path(entry.path)
                if entry.name.startswith("."):
                    yield Skipped(path, "hidden file in a Maildir (not a message by Maildir rules)")
                elif not entry.is_file():
                    yield Skipped(path, "not a regular file")
                else:
                    yield Found(path, "maildir", None, file_chunks(path))
        tmp = folder / "tmp"
        if tmp.is_dir():
            for entry in listing(tmp)[0]:
                yield Skipped(
                    Path(entry.path), "in tmp/: an unfinished delivery, not yet a message"
                )
    entries, failed = listing(folder)
    if failed is not None and not maildir:
        yield failed
    for entry in entries:
        path = Path(entry.path)
        if maildir and entry.name in ("cur", "new", "tmp"):
            continue
        if entry.is_dir(follow_symlinks=False):
            if entry.name.startswith(".") and not is_maildir(path):
                continue
            yield from _folder(path)
        elif entry.is_symlink() and path.is_dir():
            yield Skipped(path, "a symbolic link to a directory: not followed (import its target)")
        elif not _METADATA.match(entry.name):
            yield Skipped(path, "not in cur/ or new/ of a Maildir, so not a Maildir message")
