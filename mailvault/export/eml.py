"""Export as a directory of ``<sha256>.eml`` files, one per message, exact bytes by default.

Each file is written as ``.<sha256>.eml.tmp-<pid>-<random>`` in the same directory, then made durable
in batches and renamed; a re-export skips files that are already there and correct, and keeps
one whose content no longer matches its name as ``<name>.changed-<time>`` (an edit is someone's
work), writing the archived message in its place.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable
from pathlib import Path

from mailvault._tempfiles import remove_orphans, temp_path
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
from mailvault.export.manifest import read_summary
from mailvault.export.transform import MessageMeta

_OURS = re.compile(
    rf"^(?:[0-9a-f]{{64}}\.eml(?:\.changed-\d+)?|manifest\.jsonl?|\..*\.tmp-[0-9a-z-]+"
    rf"|{re.escape(LOCK_NAME)})$"
)


class EmlTarget(Target):
    def __init__(self, out: Path, line_endings: str) -> None:
        self.out = out
        self.line_endings = line_endings
        self.batch = DirBatch(out)
        self.names: set[str] = set()
        # a file whose content was changed after the export is kept under this suffix (its
        # name is the message's, and the archived message goes there): an edit is not lost
        self.changed_suffix = f".changed-{int(time.time())}"

    def open(self) -> None:
        out = self.out
        wanted = "a new one, an empty one, or one written by an earlier eml export"
        entries = existing_entries(out, "eml", wanted)
        if entries is not None:
            strangers = [name for name in entries if not _OURS.match(name)]
            previous = read_summary(out / "manifest.json") if strangers else None
            if strangers and previous is not None and previous.get("format") == "eml":
                raise ExportError(
                    f"{out} is an eml export, but it also holds {strangers[0]!r}, which no "
                    "export writes; move that out of the directory and rerun"
                )
            if strangers:
                raise ExportError(
                    f"{out} is not empty and not an eml export (it holds {strangers[0]!r}); "
                    "choose a new or empty directory"
                )
        make_dirs(out)
        self.take_lock(out / LOCK_NAME, out)
        if entries is not None:
            check_previous_export(out, "eml", self.line_endings)
            # listed again under the lock: an export that held it may have added files since
            entries = existing_entries(out, "eml", wanted) or []
            self.names = {name for name in entries if name.endswith(".eml")}
            remove_orphans(out)

    def find(self, digest: str) -> list[str]:
        name = f"{digest}.eml"
        return [name] if name in self.names else []

    def resolve(self, relative: str) -> Path:
        return self.out / relative

    def held(self, limit: int) -> list[tuple[str, str]]:
        return [(name[:64], name) for name in sorted(self.names)[:limit]]

    def changed_copy(self, relative: str) -> str:
        return f"kept it as {relative}{self.changed_suffix} and wrote the archived message"

    def write(
        self, digest: str, meta: MessageMeta, chunks: Iterable[bytes], replaces: str | None
    ) -> Placed:
        staged = self.stage(digest, chunks)
        if replaces is not None:
            try:
                os.rename(self.out / replaces, self.out / f"{replaces}{self.changed_suffix}")
            except FileNotFoundError:
                pass  # gone meanwhile: nothing to keep
            except OSError as exc:
                raise target_error("keeping the changed copy", self.out / replaces, exc) from None
        return self._add(staged.tmp, staged.relative, staged.size)

    def stage(self, digest: str, chunks: Iterable[bytes]) -> Staged:
        name = f"{digest}.eml"
        tmp = temp_path(self.out, name)
        return Staged(tmp, name, write_new_file(tmp, chunks))

    def place_staged(self, digest: str, tmp: str, relative: str, size: int) -> None:
        self._add(tmp, relative, size)

    def _add(self, tmp: str, name: str, size: int) -> Placed:
        self.batch.add(tmp, f"{self.out}/{name}", None, size)
        self.names.add(name)
        return Placed(size=size, path=name)

    def close(self) -> None:
        self.batch.flush()

    def abort(self) -> None:
        self.batch.abort()
