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
then a new mbox is linked into place and the manifest renamed in.  The journal, and everything
a later run makes of one (an append killed half-way set aside, a committed run's manifest put
in place, the same export repeated writing nothing), is :mod:`mailvault.export.mbox_journal`:
this module writes the bytes, that one decides from what an earlier run left where they go
and whether they go at all, so each reads on its own.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from mailvault._fs import IOV_BATCH, fsync_dir, writev_all
from mailvault._tempfiles import remove_orphans, temp_path
from mailvault.export._errors import ExportError, target_error
from mailvault.export._target import (
    FILE_MODE,
    Placed,
    Target,
    copy_range,
    make_dirs,
    refuse_dangling_link,
    start_writeback,
    write_new_file,
)
from mailvault.export.mbox_journal import MboxJournal, remove_stale_journals
from mailvault.export.transform import MboxrdQuoter, MessageMeta, from_line

BUFFER = 1024 * 1024
WRITEBACK_STEP = 8 * 1024 * 1024  # start the disk write every this many bytes
BOM = b"\xef\xbb\xbf"


class MboxTarget(MboxJournal, Target):
    in_order = True  # offsets are only known in file order: prepared runs are copied in order

    def __init__(self, out: Path, *, append: bool) -> None:
        super().__init__()  # the journal's state
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

    def open(self) -> None:
        out = self.out
        if out.is_dir():
            raise ExportError(f"{out} is a directory; --format mbox needs a file path")
        refuse_dangling_link(out)
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
        process then copies them into the mbox (``place_record``, by ``sendfile`` from
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
            copy_range(run_fd, self.fd, start, end - start)
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
        self.commit_journal(record)
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
