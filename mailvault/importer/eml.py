"""Read EML: one file is one message, stored byte for byte (a leading From_ line included).

A directory is walked recursively in sorted order; ``*.eml`` files (any case) are messages.
Dot-files, dot-directories and an export's own ``manifest.json``/``manifest.jsonl`` are passed
over quietly; any other file, and a Maildir found inside, is listed as skipped, with the command
that imports it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from mailvault.importer._model import Event, Found, Skipped, file_chunks
from mailvault.importer.maildir import is_maildir, listing
from mailvault.importer.mbox import looks_like_mbox

_QUIET = frozenset({"manifest.json", "manifest.jsonl"})


def has_eml(path: Path) -> bool:
    """Whether ``path`` holds .eml files outside any Maildir (a message in a Maildir's cur/
    may be named anything, ``*.eml`` included: that is still a Maildir)."""
    for root, dirs, files in os.walk(path):
        dirs[:] = [
            d
            for d in dirs
            if not d.startswith(".")
            and not (root != str(path) and d in ("cur", "new", "tmp"))
            and not is_maildir(Path(root, d))
        ]
        if any(f.lower().endswith(".eml") and not f.startswith(".") for f in files):
            return True
    return False


def read_eml(path: Path) -> Iterator[Event]:
    if not path.is_dir():
        yield Found(path, "eml", None, file_chunks(path))
        return
    yield from _walk(path, top=True)


def _walk(directory: Path, *, top: bool) -> Iterator[Event]:
    entries, failed = listing(directory)
    if failed is not None:
        yield failed
    for entry in entries:
        path = Path(entry.path)
        if entry.name.startswith("."):
            continue
        if entry.is_dir(follow_symlinks=False):
            if is_maildir(path):
                yield Skipped(
                    path,
                    f"a Maildir inside a directory of .eml files: import it on its own "
                    f"(mailvault import {path})",
                )
                continue
            yield from _walk(path, top=False)
        elif entry.is_symlink() and path.is_dir():
            yield Skipped(path, "a symbolic link to a directory: not followed (import its target)")
        elif top and entry.name in _QUIET:
            continue
        elif not entry.is_file():
            yield Skipped(path, "not a regular file")
        elif entry.name.lower().endswith(".eml"):
            yield Found(path, "eml", None, file_chunks(path))
        elif path.suffix.lower() in (".mbox", ".mbx") or looks_like_mbox(path):
            yield Skipped(
                path, f"an mbox, not a .eml file: import it on its own (mailvault import {path})"
            )
        else:
            yield Skipped(path, "not a .eml file (import it with --format eml FILE)")
