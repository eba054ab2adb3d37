"""Export into a Maildir: every message a file in ``cur/``, written in ``tmp/`` and renamed.

File names follow the Maildir convention (djb; Dovecot's ``S=`` size field) and end with the
message's full sha256, so a later export into the same Maildir can tell what is already there:

    <unix time>.M<usec>P<pid>Q<counter>.<host>,S=<size>,H=<sha256>:2,S

``S=`` is the size of the file as written (Dovecot trusts it), ``:2,S`` marks the message seen.
The host part escapes ``/``, ``:`` and ``,`` as ``\\057``, ``\\072`` and ``\\054``.
"""

from __future__ import annotations

import itertools
import os
import re
import socket
import time
from collections.abc import Iterable
from pathlib import Path

from mailvault._tempfiles import remove_orphans
from mailvault.export._errors import ExportError, target_error
from mailvault.export._target import (
    LOCK_NAME,
    DirBatch,
    Placed,
    Staged,
    Target,
    check_previous_export,
    existing_entries,
    make_dirs,
    write_new_file,
)
from mailvault.export.transform import MessageMeta

SUBDIRS = ("cur", "new", "tmp")
_DIGEST_IN_NAME = re.compile(r",H=([0-9a-f]{64})(?=[,:!]|$)")
_COUNTER = itertools.count(1)


def _host() -> str:
    name = socket.gethostname() or "localhost"
    return name.replace("/", r"\057").replace(":", r"\072").replace(",", r"\054")


def is_maildir(path: Path) -> bool:
    return all((path / sub).is_dir() for sub in SUBDIRS)


class MaildirTarget(Target):
    def __init__(self, out: Path, line_endings: str) -> None:
        self.out = out
        self.line_endings = line_endings
        self.host = _host()
        self.batch = DirBatch(out)
        self.existing: dict[str, list[str]] = {}

    def open(self) -> None:
        out = self.out
        wanted = "a new one, an empty one, or a Maildir written by an earlier export"
        entries = existing_entries(out, "maildir", wanted)
        if entries is not None and set(entries) - {LOCK_NAME} and not is_maildir(out):
            raise ExportError(
                f"{out} is not empty and not a Maildir (no cur/, new/ and tmp/); "
                "choose a new or empty directory"
            )
        make_dirs(out)
        self.take_lock(out / LOCK_NAME, out)
        if entries is not None:
            check_previous_export(out, "maildir", self.line_endings, unlike=", not a Maildir")
            remove_orphans(out, ".manifest.")  # what an export killed with SIGKILL left
        for sub in SUBDIRS:
            make_dirs(out / sub)
        self._remove_own_orphans()
        self._scan()

    def _remove_own_orphans(self) -> None:
        """Files in tmp/ that an export from this host wrote and never renamed because it was
        killed (SIGKILL: no handler ran): the process named in the file name no longer runs.
        Other programs' files in tmp/ are theirs to clean up."""
        own = re.compile(rf"^\d+\.M\d+P(\d+)Q\d+\.{re.escape(self.host)}$")
        remove_orphans(self.out / "tmp", "", own)

    def _scan(self) -> None:
        """One pass over cur/ and new/, and those of the Maildir++ folders (``.Archive/cur``:
        a mail client moves messages there): which messages (by sha256) are already here."""
        for sub in ("cur", "new", *self._folders()):
            try:
                names = os.listdir(self.out / sub)
            except OSError as exc:
                raise target_error("reading", self.out / sub, exc) from None
            for name in names:
                match = _DIGEST_IN_NAME.search(name)
                if match:
                    self.existing.setdefault(match.group(1), []).append(f"{sub}/{name}")

    def _folders(self) -> list[str]:
        """cur/ and new/ of each Maildir++ folder: a directory ``.NAME`` holding them."""
        try:
            entries = os.listdir(self.out)
        except OSError as exc:
            raise target_error("reading", self.out, exc) from None
        return [
            f"{name}/{sub}"
            for name in sorted(entries)
            if name.startswith(".") and name not in (".", "..")
            for sub in ("cur", "new")
            if os.path.isdir(self.out / name / sub)
        ]

    def find(self, digest: str) -> list[str]:
        return sorted(self.existing.get(digest, []))

    def resolve(self, relative: str) -> Path:
        return self.out / relative

    def held(self, limit: int) -> list[tuple[str, str]]:
        return [(digest, paths[0]) for digest, paths in sorted(self.existing.items())[:limit]]

    def _base(self) -> str:
        """A unique name: the pid is the writing process's own (a worker's, when staged)."""
        now = time.time()
        return (
            f"{int(now)}.M{int(now * 1_000_000) % 1_000_000}P{os.getpid()}"
            f"Q{next(_COUNTER)}.{self.host}"
        )

    def write(
        self, digest: str, meta: MessageMeta, chunks: Iterable[bytes], replaces: str | None
    ) -> Placed:
        staged = self.stage(digest, chunks)
        return self._add(digest, staged.tmp, staged.relative, staged.size)

    def stage(self, digest: str, chunks: Iterable[bytes]) -> Staged:
        base = self._base()
        tmp = f"{self.out}/tmp/{base}"
        size = write_new_file(tmp, chunks)
        return Staged(tmp, f"cur/{base},S={size},H={digest}:2,S", size)

    def place_staged(self, digest: str, tmp: str, relative: str, size: int) -> None:
        self._add(digest, tmp, relative, size)

    def _add(self, digest: str, tmp: str, relative: str, size: int) -> Placed:
        self.batch.add(tmp, f"{self.out}/{relative}", None, size)
        self.existing.setdefault(digest, []).append(relative)
        return Placed(size=size, path=relative)

    def close(self) -> None:
        self.batch.flush()

    def abort(self) -> None:
        self.batch.abort()
