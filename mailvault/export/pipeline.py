"""Preparing messages for export on every core, handing them back in selection order.

Per message, nearly all of an export's work is CPU: decompress, re-hash, convert line endings,
hash again, quote ``From `` lines, find the header fields and render the manifest line, and
(Maildir, EML) create and write a file.  ``prepare_task`` does all of that for a run of small
messages (see ``blobs.WHOLE_MAX``), so a pool of worker processes can do it side by side while
the main process only places the results: the renames of a Maildir batch, the mbox writes, the
manifest lines.  Processes rather than threads because most of these steps hold the GIL.  For
mbox, a worker writes a task's messages (From_ line, quoted message, separator, one after the
other) to a hidden "run" file beside the target, and the main process copies the run into the
mbox by ``sendfile``, in the kernel: receiving every byte through the pool's pipe
made the main process the bottleneck.

Order and durability stay in the main process: ``Pipeline.messages`` yields, in selection
order, each message with its ``Prepared`` (and its task's open run file), or None for "do it in
the main process": a big message, which is streamed with flat memory; a message the target may
already hold; or a blob the fast path could not read, so that the streaming path reports it.  A
worker only ever writes temporary files, which the main process either renames into place once
its batch is durable or copies from and removes, or removes on failure.

Memory stays bounded: a task holds at most ``TASK_MESSAGES`` messages or ``TASK_BYTES`` bytes,
and at most ``IN_FLIGHT_PER_WORKER`` tasks per worker are outstanding at any time.
"""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

from mailvault._workers import init_worker
from mailvault.errors import ExportError
from mailvault.export._errors import target_error
from mailvault.export._target import Target
from mailvault.export.blobs import WHOLE_MAX, BlobReader
from mailvault.export.manifest import mbox_line_parts, render_entry
from mailvault.export.selection import Selected
from mailvault.export.transform import from_line, header_block, message_meta, quote_mboxrd
from mailvault.store import BlobStore

MAX_WORKERS = 4
INLINE_MAX = 64  # fewer messages than this: no pool start-up, everything in-process
TASK_MESSAGES = 64
TASK_BYTES = 4 * 1024 * 1024
IN_FLIGHT_PER_WORKER = 3

Job = tuple[str, int, str]  # sha256, size, first_ingest_at


class Prepared(NamedTuple):
    """One message read, verified and transformed whole (a tuple: cheap to pickle).

    Maildir, EML: ``line`` is the complete manifest line, ``tmp`` the temporary file holding the
    message and ``relative`` its final name.  mbox: the manifest line is ``line + str(offset) +
    tail``, and bytes [start, end) of the task's staged run are the From_ line, the quoted
    message (``size`` bytes from ``start + from_len``) and the separator.
    """

    size: int
    line: str
    tail: str = ""
    tmp: str = ""
    relative: str = ""
    start: int = 0
    end: int = 0
    from_len: int = 0


TaskResult = tuple[str, list[Prepared | None]]  # (mbox: the staged run's path, else ""), items


@dataclass(frozen=True, slots=True)
class _Context:
    reader: BlobReader
    lf: bool
    target: Target


def prepare_task(ctx: _Context, jobs: list[Job]) -> TaskResult:
    """Prepare a run of messages; on failure, the temporary files already written are removed."""
    done: list[Prepared | None] = []
    parts: list[bytes] = []
    at = 0
    try:
        for digest, size, first_ingest_at in jobs:
            raw = ctx.reader.whole(digest, size)
            if raw is None:
                done.append(None)
                continue
            meta = message_meta(
                header_block(raw),
                datetime.fromisoformat(first_ingest_at),
                envelope=ctx.target.in_order,
            )
            # CRLF -> LF: split and join is exactly replace(), and a good third faster.
            data = b"\n".join(raw.split(b"\r\n")) if ctx.lf else raw
            exported = hashlib.sha256(data).hexdigest() if ctx.lf else None
            if ctx.target.in_order:
                head = from_line(meta)
                quoted = quote_mboxrd(data)
                separator = b"\n" if quoted.endswith(b"\n") else b"\n\n"
                parts += (head, quoted, separator)
                start, at = at, at + len(head) + len(quoted) + len(separator)
                line, tail = mbox_line_parts(digest, meta, len(quoted), exported)
                done.append(Prepared(len(quoted), line, tail, "", "", start, at, len(head)))
            else:
                staged = ctx.target.stage(digest, (data,))
                line = render_entry(
                    digest, meta, staged.size, path=staged.relative, exported_sha256=exported
                )
                done.append(Prepared(staged.size, line, "", staged.tmp, staged.relative))
        run = ctx.target.stage_run(parts) if parts else ""
    except BaseException:
        discard(done)
        raise
    return run, done


def discard(prepared: Iterable[Prepared | None], run: str = "") -> None:
    """Remove the temporary files of prepared messages that will never be placed."""
    for item in prepared:
        if item is not None and item.tmp:
            with contextlib.suppress(OSError):
                os.unlink(item.tmp)
    if run:
        with contextlib.suppress(OSError):
            os.unlink(run)


# -- the worker processes ------------------------------------------------------------------------

_WORKER: list[_Context] = []


def _worker_init(root: str, lf: bool, target: Target, parent: int) -> None:
    init_worker(parent)
    _WORKER[:] = [_Context(BlobReader(BlobStore(Path(root))), lf, target)]


def _worker_task(jobs: list[Job]) -> TaskResult:
    return prepare_task(_WORKER[0], jobs)


def _noop() -> int:
    return 0


def worker_count() -> int:
    return min(os.cpu_count() or 1, MAX_WORKERS)


class Pipeline:
    """The selection's messages with what was prepared for them, in order; a context manager."""

    def __init__(
        self, store: BlobStore, target: Target, *, lf: bool, total: int, workers: int
    ) -> None:
        self.ctx = _Context(BlobReader(store), lf, target)
        self.pool: ProcessPoolExecutor | None = None
        self._workers = workers
        self._in_flight: deque[tuple[list[tuple[Selected, bool]], Future[TaskResult]]]
        self._in_flight = deque()
        self._unplaced: deque[Prepared | None] = deque()
        self._run = ""  # the staged mbox run being placed
        if workers > 1 and total >= INLINE_MAX:
            # fork: cheap, and needs no importable __main__; the children inherit the target
            # object (only its ``stage`` runs there) and never touch the catalog.
            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
            try:
                self.pool = ProcessPoolExecutor(
                    workers,
                    mp_context=context,
                    initializer=_worker_init,
                    initargs=(str(store.root), lf, target, os.getpid()),
                )
                self.pool.submit(_noop).result()
            except (OSError, BrokenProcessPool):  # no processes to be had: do it all here
                self.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _eligible(self, src: Selected) -> bool:
        """Whether it may be prepared whole (else: streamed, or checked against a copy)."""
        return src.size <= WHOLE_MAX and not self.ctx.target.find(src.sha256)

    def messages(
        self, selection: Iterable[Selected]
    ) -> Iterator[tuple[Selected, int, Prepared | None]]:
        """(message, an open fd of its task's staged mbox run or -1, its Prepared or None), in
        selection order."""
        limit = self._workers * IN_FLIGHT_PER_WORKER if self.pool is not None else 1
        task: list[tuple[Selected, bool]] = []
        task_bytes = 0
        for src in selection:
            eligible = self._eligible(src)
            task.append((src, eligible))
            task_bytes += src.size if eligible else 0
            if len(task) >= TASK_MESSAGES or task_bytes >= TASK_BYTES:
                self._submit(task)
                task, task_bytes = [], 0
                if len(self._in_flight) >= limit:
                    yield from self._collect()
        if task:
            self._submit(task)
        while self._in_flight:
            yield from self._collect()

    def _submit(self, task: list[tuple[Selected, bool]]) -> None:
        jobs = [(src.sha256, src.size, src.first_ingest_at) for src, eligible in task if eligible]
        future: Future[TaskResult]
        if self.pool is not None:
            future = self.pool.submit(_worker_task, jobs)
        else:
            future = Future()
            future.set_result(prepare_task(self.ctx, jobs))
        self._in_flight.append((task, future))

    def _collect(self) -> Iterator[tuple[Selected, int, Prepared | None]]:
        task, future = self._in_flight[0]
        try:
            run, prepared = future.result()
        except BrokenProcessPool:
            raise ExportError(
                "an export worker process died (killed, or out of memory?); the export stopped "
                "before writing its manifest: rerun it"
            ) from None
        # recorded before the task leaves _in_flight: a Ctrl-C between the two must still
        # find the run (close() removes what it finds twice only once)
        self._run = run  # removed once placed, or by close() after a failure
        self._unplaced.extend(prepared)
        self._in_flight.popleft()
        run_fd = -1
        try:
            if run:
                try:
                    run_fd = os.open(run, os.O_RDONLY)
                except OSError as exc:
                    raise target_error("reading", Path(run), exc) from None
            for src, eligible in task:
                if not eligible:
                    yield src, run_fd, None
                    continue
                # Kept in _unplaced until the caller comes back for the next one, so that
                # close() after a failure also removes the temporary file of the message
                # being placed.
                yield src, run_fd, self._unplaced[0]
                self._unplaced.popleft()
            if run_fd >= 0:
                self.ctx.target.end_run()
        finally:
            if run_fd >= 0:
                os.close(run_fd)
            discard((), self._run)
            self._run = ""

    def close(self) -> None:
        """Stop the workers; remove temporary files of prepared messages never placed."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
        discard(self._unplaced, self._run)  # a file already renamed is simply not found
        self._unplaced.clear()
        self._run = ""
        while self._in_flight:
            _, future = self._in_flight.popleft()
            if future.done() and not future.cancelled() and future.exception() is None:
                run, prepared = future.result()
                discard(prepared, run)
