"""Export into one mbox file, mboxrd-quoted, written whole or appended under a lock.

Each message is written as

    From <envelope sender> <asctime date, UTC>\\n
    <the message, every line matching ^>*From  given one more '>'>
    \\n                 only if the message does not end with a line break
    \\n                 the blank line that separates messages

The manifest's ``offset`` and ``length`` cover exactly the quoted message bytes (the second
block), so an auditor can cut each message out with ``tail -c +N | head -c L``.

A new mbox is written as ``.<target>.tmp-<pid>-<random>`` beside the target, fsynced, and linked into
place only if nothing appeared there meanwhile; an existing target is refused unless
``--append``, which takes an exclusive ``flock`` on it (mutt, Dovecot's mbox driver and
procmail use flock too), appends, fsyncs, and on any error truncates the file back to its size
before the run: a failed export never leaves a half-written message behind.

A run ends by committing (``commit``): its journal records where it ended and what it exported,
then a new mbox is linked into place and the manifest renamed in.  A rerun that finds a
committed journal finishes that run's manifest instead of writing anything again (see
docs/export.md).  Once the journal is gone, the manifest's ``written`` record of the last run
(its fingerprint, where it ended and the bytes before that end) lets the same export, repeated
while the mbox still ends where that run left it, write nothing (``last_run``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import mmap
import os
import secrets
import tempfile
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mailvault._fs import IOV_BATCH, fsync_dir, write_all, writev_all
from mailvault._tempfiles import remove_orphans, temp_path
from mailvault.export._errors import ExportError, target_error
from mailvault.export._target import (
    FILE_MODE,
    Placed,
    Target,
    make_dirs,
    start_writeback,
    write_new_file,
)
from mailvault.export.manifest import install_prepared, manifest_paths, read_summary
from mailvault.export.transform import MboxrdQuoter, MessageMeta, from_line

BUFFER = 1024 * 1024
WRITEBACK_STEP = 8 * 1024 * 1024  # start the disk write every this many bytes
BOM = b"\xef\xbb\xbf"
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


def _copy_range(source: int, target: int, start: int, length: int) -> None:
    """Write ``length`` bytes from ``start`` of ``source`` at ``target``'s file position.

    Straight from a read-only mapping of the source: one copy, page cache to page cache, in one
    ``write`` per run (``copy_file_range`` between two ext4 files splices page by page and took
    twice as long); by ``pread`` and ``write`` where the source cannot be mapped.
    """
    if os.fstat(source).st_size < start + length:  # reading a mapping past its end: SIGBUS
        raise OSError(errno.EIO, "the staged run is shorter than its records")
    try:
        mapping = mmap.mmap(source, start + length, prot=mmap.PROT_READ)
    except (OSError, ValueError):
        mapping = None
    if mapping is not None:
        # Only temporary slices, released as soon as each write returns or raises: a slice
        # kept alive by a traceback (a full disk) would stop the mapping from closing.
        try:
            with memoryview(mapping) as view:
                at, end = start, start + length
                while at < end:
                    at += os.write(target, view[at:end])
        finally:
            with contextlib.suppress(BufferError):  # then it is closed when collected
                mapping.close()
        return
    done = 0
    while done < length:
        data = os.pread(source, min(length - done, BUFFER), start + done)
        if not data:
            raise OSError(errno.EIO, "the staged run is shorter than its records")
        write_all(target, data)
        done += len(data)


class MboxTarget(Target):
    in_order = True  # offsets are only known in file order: prepared runs are copied in order

    def __init__(self, out: Path, *, append: bool) -> None:
        self.out = out
        self.append = append
        self.fd = -1
        self.tmp: Path | None = None
        self.original_size = 0
        self.start_offset = 0  # where this run's first From_ line goes
        self.pos = 0  # file offset of the next byte written
        self._parts: list[bytes] = []  # written with one writev: no copying into a buffer
        self._pending = 0  # bytes in _parts
        self._buf_start = 0
        self._written_back = 0  # start_writeback was called for the bytes before this offset
        self._truncate_to: int | None = None  # an append: the file's size before this run
        self._run_dir = str(out.parent)
        self._segment: tuple[int, int, int] | None = None  # placed, not yet copied: fd, start, end
        self.run_id = secrets.token_hex(8)  # an append's; recorded in its journal and manifest
        self.journal: Path | None = None  # the run's journal (see _recover and commit)
        self._entry: dict[str, object] = {}  # what the journal holds
        self.committed = False  # every byte durable, the journal says so: no undoing now
        self.completed: dict[str, object] | None = None  # a killed run's journal, finished now
        self._completed_journal: Path | None = None
        self.set_aside: tuple[Path, int, int] | None = None  # recovered: (file, offset, bytes)
        self.last_run: dict[str, Any] | None = None  # the manifest of the run the mbox ends with

    def open(self) -> None:
        out = self.out
        if out.is_dir():
            raise ExportError(f"{out} is a directory; --format mbox needs a file path")
        make_dirs(out.parent)
        self.take_lock(self._lock_path(), out)
        if os.access(out.parent, os.W_OK | os.X_OK):
            remove_stale_journals(out)
        exists = out.exists() or out.is_symlink()
        if exists and not self.append:
            self._adopt_killed()
            return
        if exists:
            self._open_existing()
        else:
            self.tmp = Path(temp_path(out.parent, out.name))
            try:
                # read too: the journal records the bytes before its end (commit)
                self.fd = os.open(self.tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, FILE_MODE)
            except OSError as exc:
                raise target_error("creating", self.tmp, exc) from None
        # Runs go beside the target (where there is room for the mbox, there is room for a
        # few runs).  Appending needs only the file to be writable, not its directory (a mail
        # spool): then the temp dir.
        parent = str(out.parent)
        self._run_dir = parent if os.access(parent, os.W_OK | os.X_OK) else tempfile.gettempdir()
        for directory in {parent, self._run_dir}:  # what an export killed with SIGKILL left
            remove_orphans(directory, f".{out.name}.")

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

    def _lock_path(self) -> Path:
        """Beside the mbox; in the temp dir, named by the mbox's device and inode, when
        appending in a directory that is not writable (a mail spool)."""
        parent = str(self.out.parent)
        if os.access(parent, os.W_OK | os.X_OK) or not self.out.exists():
            return self.out.with_name(f".{self.out.name}.export-lock")
        st = self.out.stat()
        return Path(tempfile.gettempdir()) / f".{self.out.name}.export-lock-{st.st_dev}-{st.st_ino}"

    def _open_existing(self) -> None:
        out = self.out
        if not out.is_file():
            raise ExportError(f"{out} is not a regular file; --append needs an mbox file")
        try:
            self.fd = os.open(out, os.O_RDWR)
        except OSError as exc:
            raise target_error("opening", out, exc) from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self.fd)
            self.fd = -1
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise ExportError(
                    f"{out} is locked by another program (a mail client?); close it and retry"
                ) from None
            raise target_error("locking", out, exc) from None
        try:
            size = os.fstat(self.fd).st_size
            head = os.pread(self.fd, 8, 0)
        except OSError as exc:
            self._close_fd()
            raise target_error("reading", out, exc) from None
        if size and not head.removeprefix(BOM).startswith(b"From "):
            self._close_fd()
            raise ExportError(
                f"{out} does not start with a From_ line, so it is not an mbox; refusing to "
                "append to it"
            )
        size = self._recover(size)  # first: what comes before this run decides its padding
        try:
            tail = os.pread(self.fd, 2, max(0, size - 2)) if size else b""
        except OSError as exc:
            self._close_fd()
            raise target_error("reading", out, exc) from None
        self._truncate_to = size
        self.original_size = size
        self.pos = size
        self._buf_start = self._written_back = size
        # The From_ line must start a line and follow a blank line, whatever the last writer did.
        if size and not tail.endswith(b"\n"):
            self._put(b"\n\n")
        elif size and tail != b"\n\n":
            self._put(b"\n")
        self.start_offset = self.pos

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
                _copy_range(self.fd, fd, start, size - start)
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

    # -- writing -----------------------------------------------------------------------------
    def _put(self, data: bytes) -> None:
        if self._segment is not None:
            self._copy_segment()
        self._parts.append(data)
        self._pending += len(data)
        self.pos += len(data)
        if self._pending >= BUFFER or len(self._parts) >= IOV_BATCH:
            self._drain()

    def _drain(self) -> None:
        if not self._parts:
            return
        path = self.tmp or self.out
        try:
            if self.tmp is None:
                os.lseek(self.fd, self._buf_start, os.SEEK_SET)
            writev_all(self.fd, self._parts)
        except OSError as exc:
            raise target_error("writing", path, exc) from None
        self._buf_start += self._pending
        self._parts.clear()
        self._pending = 0
        self._writeback()

    def _writeback(self) -> None:
        if self._buf_start - self._written_back >= WRITEBACK_STEP:
            start_writeback(self.fd, self._written_back, self._buf_start - self._written_back)
            self._written_back = self._buf_start

    def write(
        self, digest: str, meta: MessageMeta, chunks: Iterable[bytes], replaces: str | None
    ) -> Placed:
        self._put(from_line(meta))
        offset = self.pos
        quoter = MboxrdQuoter()
        last = b"\n"
        for chunk in chunks:
            quoted = quoter.feed(chunk)
            if quoted:
                self._put(quoted)
                last = quoted[-1:]
        quoted = quoter.flush()
        if quoted:
            self._put(quoted)
            last = quoted[-1:]
        length = self.pos - offset
        self._put(b"\n" if length and last == b"\n" else b"\n\n")
        return Placed(size=length, offset=offset)

    def stage_run(self, records: list[bytes]) -> str:
        """Write prepared records to a hidden file beside the target, in a worker: the main
        process then copies them into the mbox (``place_record``, straight from a mapping of
        the run) instead of receiving every byte through a pipe."""
        name = temp_path(self._run_dir, self.out.name, "run-")
        write_new_file(name, records)
        return name

    def place_record(self, run_fd: int, start: int, end: int, from_len: int) -> int:
        """Append bytes [start, end) of a staged run: From_ line, message and separator.

        Consecutive records of one run are copied together, by ``end_run`` or whatever is
        written next: one write per run instead of one per message.
        """
        self._drain()
        segment = self._segment
        if segment is not None and (segment[0] != run_fd or segment[2] != start):
            self._copy_segment()
            segment = None
        self._segment = (run_fd, start if segment is None else segment[1], end)
        offset = self.pos + from_len
        self.pos += end - start
        return offset

    def end_run(self) -> None:
        """The run being placed is about to be closed: copy what is still pending from it."""
        if self._segment is not None:
            self._copy_segment()

    def _copy_segment(self) -> None:
        assert self._segment is not None
        run_fd, start, end = self._segment
        self._segment = None
        try:
            os.lseek(self.fd, self._buf_start, os.SEEK_SET)
            _copy_range(run_fd, self.fd, start, end - start)
        except OSError as exc:
            raise target_error("writing", self.tmp or self.out, exc) from None
        self._buf_start += end - start
        self._writeback()

    def close(self) -> None:
        """Every byte durable; ``commit`` then makes the run final (and a new mbox visible)."""
        path = self.tmp or self.out
        self.end_run()
        self._drain()
        try:
            os.fsync(self.fd)
        except OSError as exc:
            raise target_error("syncing", path, exc) from None

    def commit(self, record: dict[str, object]) -> None:
        """Every byte is durable (``close``) and the manifest prepared: record that in the
        journal, with ``record`` (the selection's fingerprint, the prepared manifest files,
        count and bytes), then (a new mbox) link the file into place.  From here on the run is
        finished even if killed: a rerun recognises it by the journal (the bytes before its
        start and its end), puts its manifest in place and writes nothing again."""
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
        if self.tmp is not None:
            self._link_into_place(self.tmp)
        self.committed = True
        self._truncate_to = None
        self._close_fd()

    def _link_into_place(self, tmp: Path) -> None:
        out = self.out
        try:
            os.link(tmp, out)
        except FileExistsError:
            raise ExportError(
                f"{out} appeared while the export ran; nothing was overwritten, choose another --out"
            ) from None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise target_error("renaming into", out, exc) from None
            if out.exists():
                raise ExportError(
                    f"{out} appeared while the export ran; nothing was overwritten, "
                    "choose another --out"
                ) from None
            try:
                os.rename(tmp, out)
            except OSError as exc2:
                raise target_error("renaming into", out, exc2) from None
        with contextlib.suppress(OSError):
            tmp.unlink()
        self.tmp = None
        try:
            fsync_dir(out.parent)
        except OSError as exc:
            raise target_error("syncing", out.parent, exc) from None

    def _close_fd(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)  # also drops the flock of an append
            self.fd = -1

    def abort(self) -> None:
        self._segment = None
        self._parts = []
        self._pending = 0
        if self.committed:  # finished but for the manifest: the journal lets a rerun finish it
            self._close_fd()
            return
        if self.fd >= 0 and self._truncate_to is not None:  # an append: cut back to what it was
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, self._truncate_to)
                os.fsync(self.fd)
        self._close_fd()
        self.finished()  # cut back to where it started: nothing of this run is left
        if self.tmp is not None:
            with contextlib.suppress(OSError):
                self.tmp.unlink()
            self.tmp = None
