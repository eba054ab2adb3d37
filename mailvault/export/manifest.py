"""The export manifest: ``manifest.jsonl`` (one object per message) and ``manifest.json``.

Both follow ``schemas/export-manifest.schema.json`` (schema id ``mailvault/export-manifest/v1``).
For Maildir and EML exports the two files sit in the target directory; for mbox they sit beside
the mbox file as ``<mbox>.manifest.jsonl`` and ``<mbox>.manifest.json``.

Both are written to a temporary name, fsynced and renamed, so a manifest is either the complete
one of a finished export or the previous one: an interrupted export never leaves a manifest that
names files which do not exist.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from json.encoder import encode_basestring as _json_string  # json.dumps' own, ensure_ascii off
from pathlib import Path
from typing import IO, Any

from mailvault._fs import fsync_dir
from mailvault._tempfiles import temp_path
from mailvault._text import undecodable
from mailvault.export._errors import ExportError, target_error
from mailvault.export.transform import MessageMeta

SCHEMA_ID = "mailvault/export-manifest/v1"


def manifest_paths(fmt: str, out: Path) -> tuple[Path, Path]:
    """(entries, summary) paths for an export of format ``fmt`` to ``out``."""
    if fmt == "mbox":
        return out.with_name(out.name + ".manifest.jsonl"), out.with_name(
            out.name + ".manifest.json"
        )
    return out / "manifest.jsonl", out / "manifest.json"


_COMPACT: dict[str, Any] = {"ensure_ascii": False, "separators": (",", ":")}


def render_entry(
    sha256: str,
    meta: MessageMeta,
    size: int,
    *,
    path: str | None = None,
    offset: int | None = None,
    exported_sha256: str | None = None,
) -> str:
    """One message's ``manifest.jsonl`` line (without the newline): the keys in the documented
    order, exactly as ``json.dumps(..., ensure_ascii=False, separators=(",", ":"))`` writes
    them.  Built directly: export writes one per message, and a dict and the generic encoder
    cost more than the rest of placing a message."""
    message_id = "null" if meta.message_id is None else _json_string(meta.message_id)
    source = "header" if meta.date_from_header else "ingest"
    line = (
        f'{{"sha256":"{sha256}","message_id":{message_id},"date":"{meta.date.isoformat()}",'
        f'"date_source":"{source}","size":{size}'
    )
    if path is not None:
        line += ',"path":' + _json_string(path)
    if offset is not None:
        line += f',"offset":{offset},"length":{size}'
    if exported_sha256 is not None:
        line += f',"exported_sha256":"{exported_sha256}"'
    return line + "}"


def mbox_line_parts(
    sha256: str, meta: MessageMeta, size: int, exported_sha256: str | None
) -> tuple[str, str]:
    """An mbox entry's line around its offset, which only the writing process knows:
    ``head + str(offset) + tail`` is exactly ``render_entry`` of the complete entry."""
    head = render_entry(sha256, meta, size)[:-1] + ',"offset":'
    tail = f',"length":{size}'
    if exported_sha256 is not None:
        tail += f',"exported_sha256":"{exported_sha256}"'
    return head, tail + "}"


def read_summary(path: Path) -> dict[str, Any] | None:
    """A previous export's summary, or None if there is none (or it is not ours)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA_ID:
        return None
    return data


class ManifestWriter:
    """Streams entries to a temporary jsonl file; ``finish`` puts both files in place."""

    def __init__(self, entries_path: Path, summary_path: Path, *, keep_existing: bool) -> None:
        self.entries_path = entries_path
        self.summary_path = summary_path
        self.previous_entries = 0
        self._tmp = Path(temp_path(entries_path.parent, entries_path.name))
        self._summary_tmp = Path(temp_path(summary_path.parent, summary_path.name))
        self._file: IO[str] | None = None
        try:
            fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            self._file = os.fdopen(fd, "w", encoding="utf-8", newline="\n")
            if keep_existing and entries_path.exists():
                # a byte that is not UTF-8 (an edited manifest) damages its line only: it is
                # carried over with U+FFFD for it, not a UnicodeDecodeError traceback
                with entries_path.open("r", encoding="utf-8", errors="replace") as old:
                    for line in old:
                        if line.strip():
                            self._file.write(line if line.endswith("\n") else line + "\n")
                            self.previous_entries += 1
        except OSError as exc:
            self.abort()
            raise target_error("writing the manifest", self._tmp, exc) from None

    def add_line(self, line: str) -> None:
        """An entry rendered by ``render_entry`` (or ``mbox_line_parts``)."""
        assert self._file is not None
        try:
            self._file.write(line + "\n")
        except OSError as exc:
            raise target_error("writing the manifest", self._tmp, exc) from None

    def carry_over(self, keep: Callable[[dict[str, Any]], dict[str, Any] | None]) -> int:
        """Add the entries of the manifest in place (an earlier export's) that ``keep`` keeps
        (it returns the entry, updated as it sees fit, or None); how many it kept.  A Maildir
        or EML target gathers the exports made into it, and its manifest must list all it
        holds, not the last run's selection alone."""
        assert self._file is not None
        kept = 0
        try:
            with self.entries_path.open("rb") as old:
                for line in old:
                    try:  # decoded here: a byte that is not UTF-8 damages its line only
                        entry = json.loads(line.decode("utf-8"))
                    except ValueError:
                        continue  # a damaged line lists nothing it can vouch for
                    if isinstance(entry, dict) and (entry := keep(entry)) is not None:
                        self._file.write(json.dumps(entry, **_COMPACT) + "\n")
                        kept += 1
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise target_error("writing the manifest", self._tmp, exc) from None
        return kept

    @property
    def temp_paths(self) -> tuple[Path, Path]:
        """Where ``prepare`` leaves the two files: (entries, summary)."""
        return self._tmp, self._summary_tmp

    def prepare(self, summary: dict[str, Any]) -> None:
        """Both files complete and durable under their temporary names (an mbox export's
        journal then names them, so that a rerun can put them in place)."""
        assert self._file is not None
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            with open(self._summary_tmp, "w", encoding="utf-8", newline="\n") as f:
                f.write(_summary_text(summary) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.chmod(self._summary_tmp, 0o600)
            fsync_dir(self.entries_path.parent)
        except OSError as exc:
            self.abort()
            raise target_error("writing the manifest", self.summary_path, exc) from None

    def install(self) -> None:
        """Rename the prepared files into place: the entries first, then the summary."""
        try:
            install_prepared(
                [(self._tmp, self.entries_path), (self._summary_tmp, self.summary_path)]
            )
        except OSError as exc:  # the files stay for abort(), or for the rerun of a committed run
            raise target_error("writing the manifest", self.summary_path, exc) from None

    def abort(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        for path in (self._tmp, self._summary_tmp):
            with contextlib.suppress(OSError):
                path.unlink()


def _summary_text(summary: dict[str, Any]) -> str:
    """The summary as indented JSON, non-ASCII text as is; all-ASCII escapes when it names an
    mbox whose name has bytes that are not UTF-8 (``entries``): a surrogate escape cannot be
    written as UTF-8, while ``"\\udce9"`` is valid JSON that reads back as the same name."""
    text = json.dumps(summary, indent=2, ensure_ascii=False)
    return json.dumps(summary, indent=2) if undecodable(text) else text


def install_prepared(pairs: list[tuple[Path, Path]]) -> None:
    """Rename prepared manifest files into place, skipping those already renamed."""
    for tmp, final in pairs:
        with contextlib.suppress(FileNotFoundError):
            os.replace(tmp, final)
    fsync_dir(pairs[0][1].parent)


@dataclass(frozen=True, slots=True)
class MboxEntry:
    """Where a message sits in an exported mbox, and what it must hash to once read back."""

    offset: int
    length: int
    hashes: frozenset[str]


class MboxManifestCursor:
    """Walks ``<mbox>.manifest.jsonl`` in step with a reader moving forward through the mbox.

    Entries are in offset order (they are written in file order), so only one is held at a
    time: memory stays flat however many messages the mbox holds.
    """

    def __init__(self, entries_path: Path) -> None:
        self._path = entries_path
        self._all: set[bytes] | None = None  # every hash of the manifest, read on first need
        # bytes: a line that is not UTF-8 is one more unreadable line (decoded in the try below),
        # where a text-mode file raised UnicodeDecodeError out of the loop, ending the import
        self._file: IO[bytes] | None = entries_path.open("rb")
        self._lines: Iterator[bytes] = iter(self._file)
        self._next: MboxEntry | None = None
        self._matched = False
        self._missed: list[MboxEntry] = []
        self.broken: str | None = None
        self._advance()

    def _advance(self) -> None:
        if self._next is not None and not self._matched:
            self._missed.append(self._next)
        self._next = None
        self._matched = False
        for line in self._lines:
            if not line.strip():
                continue
            try:
                data = json.loads(line.decode("utf-8"))
                entry = MboxEntry(
                    int(data["offset"]),
                    int(data["length"]),
                    frozenset(
                        h
                        for h in (data["sha256"], data.get("exported_sha256"))
                        if isinstance(h, str)
                    ),
                )
            except (ValueError, KeyError, TypeError) as exc:
                self.broken = (
                    f"unreadable manifest line ({exc}); the manifest was ignored from here"
                )
                self.close()
                return
            self._next = entry
            return

    def at(self, offset: int) -> MboxEntry | None:
        """The entry for the message starting at ``offset``, if the manifest has one."""
        while self._next is not None and self._next.offset < offset:
            self._advance()
        if self._next is not None and self._next.offset == offset:
            self._matched = True
            return self._next
        return None

    def lists(self, digest: str) -> bool:
        """Whether any entry of the manifest hashes to ``digest``: a message found where the
        manifest places another (an edit shifted it there) is then one it lists elsewhere.
        Read in one pass the first time it is asked (32 bytes per hash), only on that path."""
        if self._all is None:
            self._all = set()
            with contextlib.suppress(OSError), self._path.open("rb") as f:
                for line in f:
                    with contextlib.suppress(ValueError, TypeError, AttributeError):
                        data = json.loads(line.decode("utf-8"))
                        for key in ("sha256", "exported_sha256"):
                            if isinstance(data.get(key), str):
                                self._all.add(bytes.fromhex(data[key]))
        try:
            return bytes.fromhex(digest) in self._all
        except ValueError:
            return False

    def take_missed(self) -> list[MboxEntry]:
        """Entries passed over without a message starting at their offset (since last call)."""
        missed, self._missed = self._missed, []
        return missed

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._lines = iter(())


def check_writable_manifest(paths: tuple[Path, Path]) -> None:
    """Refuse manifest paths that exist as something other than files."""
    for path in paths:
        if path.exists() and not path.is_file():
            raise ExportError(f"{path} exists and is not a file; move it away or use --no-manifest")
