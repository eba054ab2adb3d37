"""The journal of an mbox export, and what a later run makes of it: crash recovery and
repeat detection for ``mailvault export --format mbox``.

An mbox is one file that other programs may append to too, so unlike a Maildir it cannot be
made safe by temporary names alone.  Before an append writes its first byte, its journal
(``.<mbox>.append-journal-<dev>-<ino>``, beside the mbox or, for a spool, in the temp dir)
records where it starts and the bytes before that start (``tail_sha256``: an inode can be
reused by another file).  A run ends by committing: its journal records where it ended and what
it exported (``commit_journal``), then a new mbox is linked into place and the manifest renamed
in.  A rerun that finds a journal:

* of a run that committed, into this very file: puts that run's manifest in place and, if it
  is the same export, writes nothing again (``completed``);
* of an append killed before it committed: sets the bytes it added aside in
  ``<mbox>.interrupted-<time>`` (another program may have appended behind them, so they are
  never destroyed), cuts the manifest's lines back, and appends at the old end (``set_aside``).

Once the journal is gone, the manifest's ``written`` record of the last run (its fingerprint,
where it ended and the bytes before that end) lets the same export, repeated while the mbox
still ends where that run left it, write nothing (``last_run``).  Journals of a file no longer
at the mbox's path are removed (``remove_stale_journals``).

This is split from :mod:`mailvault.export.mbox` along the line between writing bytes and
deciding, from what an earlier run left, where they go and whether they go at all.  The writer
(``MboxTarget``) mixes ``MboxJournal`` in and calls it when it opens the target
(``_adopt_killed``, ``_recover``), when it commits (``commit_journal``) and when the run is
over (``finished``); the export loop reads what it found (``completed``, ``last_run``,
``set_aside``) through the target.  See docs/export.md.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailvault._fs import fsync_dir, write_all
from mailvault._tempfiles import temp_path
from mailvault.export._errors import ExportError, target_error
from mailvault.export._target import FILE_MODE, copy_range
from mailvault.export.manifest import install_prepared, manifest_paths, read_summary

TAIL_CHECK = 64 * 1024  # bytes before an append's start that identify its mbox (the journal)


def _read_journal(path: Path) -> dict[str, object] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _count_lines(path: Path) -> int:
    try:
        with path.open("rb") as f:
            return sum(1 for line in f if line.strip())
    except OSError:
        return 0


def _cut_lines(path: Path, keep: int) -> None:
    """Keep the first ``keep`` entries of a manifest.jsonl (replaced atomically)."""
    if _count_lines(path) <= keep:
        return
    fresh = Path(temp_path(path.parent, path.name))
    try:
        with path.open("rb") as old, open(fresh, "xb") as new:
            left = keep
            for line in old:
                if left == 0:
                    break
                if line.strip():
                    new.write(line)
                    left -= 1
            new.flush()
            os.fsync(new.fileno())
        os.replace(fresh, path)
        fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            fresh.unlink()
        raise target_error("repairing the manifest", path, exc) from None


def _manifest_run(out: Path) -> object:
    """The run id the mbox's manifest summary records for the export that wrote it last."""
    summary = read_summary(manifest_paths("mbox", out)[1])
    if summary is None:
        return None
    append = summary.get("append")
    return summary.get("run") or (append.get("run") if isinstance(append, dict) else None)


def _journal_of(name: str, journal: str) -> tuple[int, int] | None:
    """The (device, inode) a journal file of the mbox ``name`` is named by (also its
    ``.new``), or None if ``journal`` is not one."""
    prefix = f".{name}.append-journal-"
    if not journal.startswith(prefix):
        return None
    dev, _, ino = journal[len(prefix) :].removesuffix(".new").partition("-")
    if not (dev.isdigit() and ino.isdigit()):
        return None
    return int(dev), int(ino)


def remove_stale_journals(out: Path) -> None:
    """Remove the journals beside ``out`` named by a file that is no longer the one at
    ``out`` (deleted or replaced since, or the never-linked temp file of a new mbox killed
    before it was in place): no run can use them, and a later file given that inode must
    not be taken for theirs.  Called under the target's lock, so no live run's journal is
    among them; those in the temp dir (a spool's) are left alone, as other directories'
    mboxes of the same name keep theirs there."""
    parent = out.parent
    try:
        st = os.stat(out)
        current: tuple[int, int] | None = (st.st_dev, st.st_ino)
    except FileNotFoundError:
        current = None
    except OSError:
        return  # cannot tell which file is there: keep every journal
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        named = _journal_of(out.name, name)
        if named is not None and named != current:
            with contextlib.suppress(OSError):
                os.unlink(parent / name)


def _write_journal(path: Path, entry: dict[str, object]) -> None:
    """Replace the journal at ``path`` with ``entry``, durably (temp, fsync, rename, fsync)."""
    fresh = f"{path}.new"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(fresh)  # left by a run killed while writing its journal
    fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    try:
        write_all(fd, json.dumps(entry).encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(fresh, path)
    fsync_dir(path.parent)


class MboxJournal:
    """The journal half of ``MboxTarget`` (a mixin): the run's journal, what an earlier run's
    journal or manifest says, and the recovery that follows from it."""

    # The writer's, read here: the target, its open file, and where this run's bytes go.
    out: Path
    fd: int
    tmp: Path | None  # a new mbox's temporary file, until it is linked into place
    pos: int  # file offset of the next byte written
    start_offset: int  # where this run's first From_ line goes
    original_size: int

    if TYPE_CHECKING:

        def _close_fd(self) -> None: ...

    def __init__(self) -> None:
        self.run_id = secrets.token_hex(8)  # an append's; recorded in its journal and manifest
        self.journal: Path | None = None  # the run's journal (see _recover and commit)
        self._entry: dict[str, object] = {}  # what the journal holds
        self.committed = False  # every byte durable, the journal says so: no undoing now
        self.completed: dict[str, object] | None = None  # a killed run's journal, finished now
        self._completed_journal: Path | None = None
        self.set_aside: tuple[Path, int, int] | None = None  # recovered: (file, offset, bytes)
        self.last_run: dict[str, Any] | None = None  # the manifest of the run the mbox ends with

    # -- an existing target: this very export again? ------------------------------------------
    def refusal(self) -> ExportError:
        """An existing target without --append.  Never sends the user to --append: it adds
        every selected message after what the file holds, even those it holds already."""
        return ExportError(
            f"{self.out} already exists; choose a new --out (--append would add every selected "
            "message after what it holds, even one it holds already)"
        )

    def _adopt_killed(self) -> None:
        """The target exists and this is no append: it may be the mbox of this very export,
        killed after linking it into place (its journal, written just before the link, says
        so): finish that run's manifest, and leave it to the caller to see whether it is the
        same export (``completed``).  Or its manifest says one export wrote the whole file,
        which is unchanged since: the caller sees whether it is this one (``last_run``).
        Anything else is refused."""
        if self.out.is_symlink():  # an export links its mbox into place as a file, never so
            raise self.refusal()
        try:
            self.fd = os.open(self.out, os.O_RDONLY | os.O_NOFOLLOW)
            size = os.fstat(self.fd).st_size
            journal = self._journal_path()
            previous = _read_journal(journal)
            new = previous is not None and previous.get("kind") == "new"
            if previous is None or not new or not self._committed_here(previous, size):
                self.last_run = self._ended_by_last_run(size, whole=True)
                if self.last_run is None:
                    raise self.refusal()
                return
            if not self._complete(previous):
                raise ExportError(
                    f"{self.out} was written by an export killed before its manifest was in "
                    "place, and that manifest is gone; move the mbox away and export again"
                )
            self.completed, self._completed_journal = previous, journal
        except OSError as exc:
            raise target_error("reading", self.out, exc) from None
        finally:
            self._close_fd()

    def _committed_here(self, journal: dict[str, object], size: int) -> bool:
        """Whether the journal is that of a run which committed (every byte durable, the
        manifest ready) into this very file: the bytes before its start and before its end
        are the ones it recorded."""
        end = journal.get("end")
        return (
            journal.get("committed") is True
            and isinstance(end, int)
            and self._same_file(journal, size)
            and end <= size
            and self._tail_hash(end) == journal.get("end_tail")
        )

    def _complete(self, journal: dict[str, object]) -> bool:
        """Put in place the manifest a committed run prepared; whether that run is complete."""
        prepared = journal.get("manifest")
        if prepared is None:
            return True  # --no-manifest: the data was all there was
        if not isinstance(prepared, list) or len(prepared) != 2:
            return False
        paths = manifest_paths("mbox", self.out)
        try:
            install_prepared(
                [(Path(str(prepared[0])), paths[0]), (Path(str(prepared[1])), paths[1])]
            )
        except OSError as exc:
            raise target_error("writing the manifest", paths[1], exc) from None
        return _manifest_run(self.out) == journal.get("run")

    def _ended_by_last_run(self, size: int, *, whole: bool) -> dict[str, Any] | None:
        """The manifest summary of the export that wrote last, if the mbox still ends exactly
        where it ended (its size, the bytes before the end) and, if ``whole``, that export
        wrote the file from its first byte."""
        summary = read_summary(manifest_paths("mbox", self.out)[1])
        written = summary.get("written") if summary is not None else None
        if not isinstance(written, dict) or written.get("end") != size:
            return None
        if whole and written.get("start") != 0:
            return None
        if self._tail_hash(size) != written.get("end_tail_sha256"):
            return None
        return summary

    def written(self, fingerprint: str) -> dict[str, object]:
        """The manifest's record of this run (``written``), once every byte is durable: what
        tells its repetition (``last_run``) while the mbox ends with what it wrote."""
        return {
            "selection": fingerprint,
            "start": self.start_offset,
            "end": self.pos,
            "end_tail_sha256": self._tail_hash(self.pos),
        }

    # -- an append killed half-way ------------------------------------------------------------
    def _journal_path(self) -> Path:
        st = os.fstat(self.fd)
        parent = str(self.out.parent)
        where = parent if os.access(parent, os.W_OK | os.X_OK) else tempfile.gettempdir()
        return Path(where) / f".{self.out.name}.append-journal-{st.st_dev}-{st.st_ino}"

    def _recover(self, size: int) -> int:
        """Before appending: undo the partial output of an append that was killed (its
        journal is still there), then start this run's journal.  Returns the size to append at.

        The bytes the killed run added are set aside, not destroyed (another program may have
        appended behind them since), in ``<mbox>.interrupted-<time>`` beside the mbox.  A run
        that had committed (see ``commit``) was complete: its manifest is put in place, it is
        left alone, and ``completed`` tells the caller, which starts this run's journal
        (``start_append``) only if this is another export.
        """
        journal = self._journal_path()
        previous = _read_journal(journal)
        if previous is not None and not self._same_file(previous, size):
            previous = None  # another file that got the inode of the one it was kept for
        # A run that committed was killed after it finished: nothing to undo.
        finished = previous is not None and self._committed_here(previous, size)
        if previous is not None and finished and self._complete(previous):
            self.completed, self._completed_journal = previous, journal
            return size  # the caller decides: the same export (done), or append after it
        if previous is not None and previous.get("kind") == "new":
            previous = None  # a new mbox's, not recognised (changed since): nothing to undo
        entries_path = manifest_paths("mbox", self.out)[0]
        completed = previous is not None and previous.get("run") == _manifest_run(self.out)
        start = previous.get("size") if previous is not None else None
        if isinstance(start, int) and not completed and 0 <= start < size:
            self._set_aside(start, size)
            size = start
        kept = previous.get("entries") if previous is not None else None
        if isinstance(kept, int) and not completed:
            # killed between renaming manifest.jsonl and manifest.json: its lines go too
            _cut_lines(entries_path, kept)
        self._start_journal(size)
        self.last_run = self._ended_by_last_run(size, whole=False)
        return size

    def start_append(self) -> None:
        """Append after a killed run found finished (``completed``), another export's."""
        self._start_journal(self.original_size)
        self._completed_journal = None  # replaced by this run's

    def forget_completed(self) -> None:
        """The killed run found finished is done with: its journal goes."""
        if self._completed_journal is not None:
            with contextlib.suppress(OSError):
                self._completed_journal.unlink()
            self._completed_journal = None

    def _start_journal(self, size: int) -> None:
        """Record where this append starts, durably, before its first byte."""
        journal = self._journal_path()
        entries_path = manifest_paths("mbox", self.out)[0]
        self._entry = {
            "kind": "append",
            "run": self.run_id,
            "size": size,
            "tail_sha256": self._tail_hash(size),
            "entries": _count_lines(entries_path),
            "pid": os.getpid(),
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        try:
            _write_journal(journal, self._entry)
        except OSError as exc:
            self._close_fd()
            raise target_error("writing the append journal", journal, exc) from None
        self.journal = journal

    def _tail_hash(self, end: int) -> str:
        """sha256 of the (up to) 64 KiB before ``end``: what identifies the mbox a journal
        was written for, since a deleted mbox's inode (the journal's name) can be reused."""
        length = min(end, TAIL_CHECK)
        try:
            data = os.pread(self.fd, length, end - length) if length else b""
        except OSError:
            return ""
        return hashlib.sha256(data).hexdigest()

    def _same_file(self, journal: dict[str, object], size: int) -> bool:
        start, tail = journal.get("size"), journal.get("tail_sha256")
        if tail is None:  # a journal from before tails were recorded
            return True
        return isinstance(start, int) and 0 <= start <= size and self._tail_hash(start) == tail

    def _set_aside(self, start: int, size: int) -> None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        aside = self.out.with_name(f"{self.out.name}.interrupted-{stamp}")
        fd = -1
        try:
            for attempt in range(1, 1000):  # a name of its own: never touch an existing file
                try:
                    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
                    break
                except FileExistsError:
                    aside = self.out.with_name(f"{self.out.name}.interrupted-{stamp}-{attempt}")
            else:
                raise FileExistsError(errno.EEXIST, "no free name for the set-aside file")
            try:
                copy_range(self.fd, fd, start, size - start)
                os.fsync(fd)
            finally:
                os.close(fd)
            fsync_dir(aside.parent)
            os.ftruncate(self.fd, start)
            os.fsync(self.fd)
        except OSError as exc:
            self._close_fd()
            if fd >= 0:  # ours, and incomplete: the bytes are still in the mbox
                with contextlib.suppress(OSError):
                    aside.unlink()
            raise ExportError(
                f"an earlier export --append into {self.out} was killed and left {size - start} "
                f"bytes after offset {start}; setting them aside in {aside} failed "
                f"({exc.strerror}); free some space, or cut them off yourself "
                f"(`truncate -s {start} {self.out}`), and retry"
            ) from None
        self.set_aside = (aside, start, size - start)

    def finished(self) -> None:
        """The run is complete, manifest included: its journal can go."""
        if self.journal is not None:
            with contextlib.suppress(OSError):
                self.journal.unlink()
            self.journal = None

    def commit_journal(self, record: dict[str, object]) -> None:
        """Record in the journal that every byte is durable and the manifest prepared, with
        ``record`` (the selection's fingerprint, the prepared manifest files, count and bytes),
        where the run ended and the bytes before that end.  A new mbox gets its journal only
        now, just before it is linked into place: until then there is nothing to recover."""
        end = self.pos
        entry = {**self._entry, **record, "committed": True, "end": end}
        entry["end_tail"] = self._tail_hash(end)
        if self.tmp is not None:
            entry.update(
                kind="new",
                run=self.run_id,
                size=0,
                tail_sha256=self._tail_hash(0),
                pid=os.getpid(),
                started_at=datetime.now(UTC).isoformat(timespec="seconds"),
            )
            self.journal = self._journal_path()
        assert self.journal is not None
        try:
            _write_journal(self.journal, entry)
        except OSError as exc:
            raise target_error("writing the export journal", self.journal, exc) from None
